"""Stage 3 over several devices: a test list split over worker processes, one results.jsonl.

`synthesize_parallel(make_synth, utts, run_dir, ..., devices=...)` runs one worker process per
device (`worker_devices`: the visible GPUs, or N processes on the CPU). The requests are sorted
by the length of their `text` field (known before any model runs; longest first, ties in list
order) and dealt out: worker i takes sorted positions i, i+n, i+2n, ... (`split_requests`), so
every worker gets long and short lines alike. Each worker builds its own `Synthesis` with
`make_synth(device)` (a picklable callable: workers are started with "spawn", which CUDA needs),
writes its .wav files into the run folder and its records to a hidden part file; when all are
done the parent writes the ONE results.jsonl in list order (`write_results`) and removes the
part files. Per-utterance seeds (`utterance_seed`) make each line's output independent of which
worker, batch or device decodes it, so the folder equals a one-device run line for line (up to
the timing fields and `batch_size`).

A worker that fails (an exception, or killed: out of memory, a signal) stops the run: the other
workers are stopped, nothing is merged into results.jsonl (it is left empty), this run's .wav
and part files are removed, and an InferenceError names the worker, its device and its lines.
The folder stays claimed (`claim_run_dir`): running the same command again writes a new one.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from models.base.inference import (
    RESULTS,
    Decoding,
    Failure,
    InferenceError,
    Summary,
    Synthesis,
    decode_requests,
    log_summary,
    synthesize,
    write_results,
)
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

log = logging.getLogger(__name__)

# Errors that mean bad input (a message is enough); anything else also logs its traceback.
_EXPECTED = (InferenceError, CheckpointError, ConfigError)


def worker_devices(num_workers: int | None, device: str | None = None) -> list[torch.device]:
    """One device per worker. `device` given: every worker on it; else the visible GPUs in turn
    (worker i on cuda:i mod count), else the CPU. num_workers None: one per visible GPU, 1 on
    a machine without one."""
    gpus = torch.cuda.device_count() if device is None else 0
    n = num_workers if num_workers is not None else max(gpus, 1)
    if n < 1:
        raise InferenceError(f"--infer_num_workers {n}: needs at least 1 worker")
    if device is not None:
        return [torch.device(device)] * n
    if gpus:
        return [torch.device("cuda", i % gpus) for i in range(n)]
    return [torch.device("cpu")] * n


def request_length(utt) -> int:
    """The split's sort key: characters of the request's `text` field (0 without one)."""
    return len(str(utt.fields().get("text", "")))


def split_requests(utts: Sequence, n: int) -> list[list]:
    """Sort by `request_length` (longest first, ties in list order) and deal out: part i holds
    sorted positions i, i+n, ...; each part keeps list order."""
    order = sorted(range(len(utts)), key=lambda k: -request_length(utts[k]))
    return [[utts[k] for k in sorted(order[i::n])] for i in range(n)]


def part_file(run_dir: Path, index: int) -> Path:
    """Worker `index`'s records while it runs (merged into results.jsonl, then removed)."""
    return run_dir / f".{RESULTS}.worker-{index}"


def synthesize_parallel(
    make_synth: Callable[[torch.device], Synthesis],
    utts: list,
    run_dir: Path,
    failures: Sequence[Failure] = (),
    *,
    devices: Sequence[torch.device],
    batch_size: int,
    seed: int,
    progress: bool = True,
    extra: dict | None = None,
) -> Summary:
    """`synthesize` over min(len(devices), len(utts)) workers (see the module docstring); one
    worker runs in this process, with the output `synthesize` writes."""
    n = max(1, min(len(devices), len(utts)))
    if n == 1:
        synth = make_synth(devices[0])
        return synthesize(synth, utts, run_dir, failures, batch_size=batch_size, seed=seed,
                          progress=progress, extra=extra)  # fmt: skip
    start = time.perf_counter()
    how = Decoding(batch_size, seed, progress, dict(extra or {}))
    parts = split_requests(utts, n)
    (run_dir / RESULTS).write_text("", encoding="utf-8")  # nothing from an earlier run stays
    cpu = sum(d.type == "cpu" for d in devices[:n])
    threads = max(1, torch.get_num_threads() // cpu) if cpu else 0  # CPU workers share cores
    shares = [f"worker {i} on {devices[i]}: {len(part)} lines" for i, part in enumerate(parts)]
    log.info("%d workers: %s", n, "; ".join(shares))
    summaries = _run_workers(make_synth, parts, devices[:n], run_dir, how, threads)
    summary = Summary(failures=list(failures))
    for i, part in enumerate(summaries):
        log_summary(part, f"worker {i} ({devices[i]})")
        summary.records += part.records
        summary.failures += part.failures
        summary.audio_seconds += part.audio_seconds
        for key, seconds in part.timings.items():
            summary.timings[key] = summary.timings.get(key, 0.0) + seconds
    results = write_results(run_dir, utts, summary)
    for i in range(n):
        part_file(run_dir, i).unlink(missing_ok=True)
    summary.wall = time.perf_counter() - start
    log_summary(summary, f"{results} ({n} workers, their times summed)")
    return summary


def _run_workers(make_synth, parts, devices, run_dir: Path, how: Decoding, threads: int):
    """Start one spawned process per part; their Summaries in part order, or InferenceError."""
    ctx = multiprocessing.get_context("spawn")
    procs, pending, summaries = [], {}, {}
    try:
        for i, (part, device) in enumerate(zip(parts, devices, strict=True)):
            receive, send = ctx.Pipe(duplex=False)
            args = (i, make_synth, device, part, run_dir, how, threads, send, time.time())
            name = f"synthesis-worker-{i}"
            procs.append(ctx.Process(target=_worker, args=args, name=name, daemon=True))
            procs[-1].start()  # (make_synth must pickle: a module-level function or partial)
            send.close()  # the child holds the sending end: EOF here when it dies
            pending[receive] = i
        while pending:
            for conn in wait(list(pending)):
                i = pending.pop(conn)
                with conn:
                    summaries[i] = _receive(conn, procs[i], i, devices[i], parts[i])
    except BaseException:  # a failed worker, or Ctrl-C: no half-merged run
        _stop(procs)
        _discard(run_dir, [utt for part in parts for utt in part], len(parts))
        raise
    for proc in procs:
        proc.join()
    return [summaries[i] for i in range(len(parts))]


def _receive(conn: Connection, proc, index: int, device, part: list) -> Summary:
    """A worker's Summary; InferenceError naming the worker and its lines when it failed."""
    try:
        status, payload = conn.recv()
    except EOFError:  # it died before reporting (killed, out of memory, a crash in C code)
        proc.join()
        status, payload = "died", _exit_reason(proc.exitcode)
    if status == "ok":
        return payload
    lines = ", ".join(str(u.line) if u.line is not None else u.name for u in part)
    raise InferenceError(
        f"worker {index} ({device}) failed: {payload}; its lines: {lines}. The other workers "
        f"were stopped; nothing was merged into {RESULTS} and this run's .wav files were "
        "removed: run the command again (a new output folder, or --overwrite true for this one)"
    )


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
        return f"killed by signal {name} (e.g. the out-of-memory killer)"
    return f"exited with status {code} without a result"


def _stop(procs: list) -> None:
    procs = [proc for proc in procs if proc.pid is not None]  # started
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _discard(run_dir: Path, utts: list, n: int) -> None:
    """What a failed parallel run wrote: its .wav files and part files (results.jsonl stays empty,
    the folder's claim)."""
    for utt in utts:
        (run_dir / f"{utt.name}.wav").unlink(missing_ok=True)
    for i in range(n):
        part_file(run_dir, i).unlink(missing_ok=True)


def _worker(index, make_synth, device, utts, run_dir: Path, how: Decoding, threads, conn, born):
    """One worker process: build the Synthesis on `device`, decode `utts`, send its Summary."""
    logging.basicConfig(
        level=logging.INFO, force=True,
        format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s",
    )  # fmt: skip
    start = time.perf_counter()
    try:
        if threads:
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # no stray CUDA context on GPU 0 from every worker
        summary = Summary()
        synth = make_synth(device)
        log.info("ready on %s %.1f s after its start (%.1f s of it loading the model)", device,
                 time.time() - born, time.perf_counter() - start)  # fmt: skip
        with open(part_file(run_dir, index), "w", encoding="utf-8") as handle:
            decode_requests(synth, utts, run_dir, handle, summary, how,
                            desc=f"worker {index}", position=index)  # fmt: skip
        summary.wall = time.perf_counter() - start
        conn.send(("ok", summary))
    except BaseException as e:  # reported to the parent, which stops the run
        log.error("failed: %s", e, exc_info=not isinstance(e, _EXPECTED))
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()
