"""The inference shell every recipe's stage 3 shares: test lists, run folders, batching, results.

What is the same for any codec-LM TTS recipe lives here: reading a test list with an error per
bad line (`read_test_list`), claiming an output folder no other run uses (`claim_run_dir`), one
sampling seed per utterance (`utterance_seed`), batches of similar length (`batches`), the
progress bar, timings and `results.jsonl` (`synthesize`). A recipe supplies two things:

* a line parser `parse_line(line, lineno, list_folder) -> request` for its line format (VALL-E:
  `text|text_prompt|audio_prompt[|name]`); a request has a `name` (the output file stem, see
  `output_name`), a `line` and `fields()`, its part of the results record;
* a `Synthesis`: the model-specific steps (text -> ids and prompt -> codes in `prepare`,
  `generate`, `decode` to a waveform, and `record`, its extra result fields).

A bad request (a line, a prompt, a text) becomes a `Failure` naming its line; the other requests
still run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from tqdm import tqdm

from utils.audio import save_audio
from utils.fileio import atomic_write_text
from utils.seeding import utterance_seed

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"  # one line per utterance or failure, in each run folder


class InferenceError(RuntimeError):
    """Inference cannot go on; the message names the file / line / phone and what to do."""


@dataclass
class Failure:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class Request(Protocol):
    """One thing to synthesise, as a recipe's line parser (or command line) makes it."""

    name: str  # output file stem, unique in a run
    line: int | None  # line of the test list (None: the command line)

    # its part of the results.jsonl record (text, prompt, ...); the length of its "text" is the
    # key by which `inference_split.split_requests` shares a list among workers
    def fields(self) -> dict: ...


class Item(Protocol):
    """A request turned into model input by `Synthesis.prepare`."""

    utt: Request

    @property
    def length(self) -> tuple: ...  # expected decoding work: the batching sort key


R = TypeVar("R", bound=Request)
P = TypeVar("P", bound=Item)


class Synthesis(Protocol[R, P]):
    """The model-specific part of inference; everything else is the shell's."""

    sample_rate: int

    def prepare(self, utts: list[R]) -> list[P | InferenceError]:
        """Text -> ids, prompt -> codes; one entry per request, an error for one that fails."""

    def generate(self, batch: list[P], seeds: list[int]) -> tuple[list[torch.Tensor], list[str]]:
        """One batch -> per item its (frames, codebooks) codes and why it stopped; item i draws
        from a generator seeded with seeds[i] only, so its output does not depend on the batch."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(frames, codebooks) codes -> 1-D waveform at sample_rate."""

    def record(self, item: P) -> dict:
        """Model-specific fields of the item's results.jsonl record (e.g. prompt frames)."""


# --------------------------------------------------------------------------------------------
# Test lists
# --------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[\w.+=-]+$")


def output_name(given: str | None, lineno: int) -> str:
    """The output file stem of a line: its optional name field (a trailing .wav dropped), else
    the line number."""
    name = given if given else str(lineno)
    name = name[:-4] if name.lower().endswith(".wav") else name
    if not _NAME_RE.match(name):
        raise InferenceError(
            f"output name {name!r} must be a plain file name (letters, digits, _.-)"
        )
    return name


def safe_name(text: str, max_len: int = 40) -> str:
    """A file stem made of the first words of free text ("Hello, world!" -> "hello_world")."""
    stem = ""
    for word in re.findall(r"\w+", text.lower()):
        if stem and len(stem) + 1 + len(word) > max_len:
            break
        stem = f"{stem}_{word}" if stem else word[:max_len]
    return stem or "pred"


def read_test_list(
    path: str | os.PathLike, parse_line: Callable[[str, int, Path], R]
) -> tuple[list[R], list[Failure]]:
    """Parse a test list; a bad line becomes a Failure (with its number), a good one a request.

    `parse_line(line, lineno, folder of the list)` is the recipe's (it raises InferenceError).
    Blank lines and lines starting with `#` are skipped; two lines may not share an output name.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InferenceError(f"test list {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InferenceError(f"test list {path}: not UTF-8 text ({e})") from None
    requests: list[R] = []
    failures: list[Failure] = []
    names: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            request = parse_line(raw, lineno, path.parent)
        except InferenceError as e:
            failures.append(Failure(lineno, str(e)))
            continue
        if request.name in names:
            used = f"output name {request.name!r} is already used by line {names[request.name]}"
            failures.append(Failure(lineno, used))
            continue
        names[request.name] = lineno
        requests.append(request)
    return requests, failures


def batches(items: Sequence[P], batch_size: int) -> Iterator[list[P]]:
    """Batches of similar expected length (`item.length`), longest first (an out-of-memory
    shows at once)."""
    order = sorted(items, key=lambda item: item.length, reverse=True)
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


# --------------------------------------------------------------------------------------------
# Output folders and the synthesis loop
# --------------------------------------------------------------------------------------------


def claim_run_dir(output_dir: Path, mode: str, overwrite: bool) -> Path:
    """OUT/<mode>, or OUT/<mode>-2, -3, ... when that holds an earlier run (unless overwrite).

    A folder is claimed by creating its results.jsonl exclusively (O_EXCL): of two runs started
    together only one can, so they never share a folder. An empty folder (a run that stopped
    before it claimed) is taken; one holding anything is not. With overwrite, OUT/<mode> is
    taken whatever it holds (the user's explicit choice).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    first = output_dir / mode
    if overwrite:
        first.mkdir(exist_ok=True)
        return first
    n = 0
    while True:
        n += 1
        candidate = first if n == 1 else output_dir / f"{mode}-{n}"
        candidate.mkdir(exist_ok=True)
        if any(candidate.iterdir()):
            continue  # an earlier (or a concurrent) run's folder
        try:
            (candidate / RESULTS).touch(exist_ok=False)
        except FileExistsError:
            continue  # another run claimed it between our two looks
        return candidate


@dataclass
class Summary:
    """What one `synthesize` call (or one worker of `synthesize_parallel`) did."""

    records: list[dict] = field(default_factory=list)  # the results.jsonl line of each output
    failures: list[Failure] = field(default_factory=list)  # every failed request
    audio_seconds: float = 0.0
    # seconds spent in: prepare (text + prompts), generate (model), decode (codec + writing)
    timings: dict[str, float] = field(
        default_factory=lambda: {"prepare": 0.0, "generate": 0.0, "decode": 0.0}
    )
    wall: float = 0.0  # seconds from start to end (a worker's: model loading included)


def _prepare(synth: Synthesis, utts: list, summary: Summary) -> list:
    start = time.perf_counter()
    prepared = []
    for utt, item in zip(utts, synth.prepare(utts), strict=True):
        if isinstance(item, InferenceError):
            summary.failures.append(Failure(utt.line, str(item)))
        else:
            prepared.append(item)
    summary.timings["prepare"] += time.perf_counter() - start
    return prepared


def _run_batch(
    synth: Synthesis, batch: list, seeds: list[int], run_dir: Path
) -> tuple[list[dict], float, float]:
    """Generate, decode and write one batch: its items' records, seconds generating, decoding."""
    start = time.perf_counter()
    all_codes, reasons = synth.generate(batch, seeds)
    generated = time.perf_counter()
    wavs = [synth.decode(codes) for codes in all_codes]
    outputs = [
        save_audio(run_dir / f"{item.utt.name}.wav", wav, synth.sample_rate)
        for item, wav in zip(batch, wavs, strict=True)
    ]
    wall = time.perf_counter() - start
    audio_seconds = sum(w.numel() for w in wavs) / synth.sample_rate
    records = []
    for item, codes, reason, wav, output, seed in zip(
        batch, all_codes, reasons, wavs, outputs, seeds, strict=True
    ):
        records.append(
            {"name": item.utt.name, "line": item.utt.line, **item.utt.fields(),
             "output": str(output), "seconds": round(wav.numel() / synth.sample_rate, 4),
             "frames": int(codes.shape[0]), "stop_reason": reason, "wall_time": round(wall, 4),
             "rtf": round(wall / audio_seconds if audio_seconds > 0 else math.inf, 4),
             "batch_size": len(batch), **synth.record(item), "seed": seed}
        )  # fmt: skip
    return records, generated - start, wall - (generated - start)


@dataclass(frozen=True)
class Decoding:
    """How `synthesize` decodes: lines per batch, the run's seed, the progress bar, and fields
    added to every record (e.g. the checkpoints the weights come from)."""

    batch_size: int
    seed: int
    progress: bool = True
    extra: dict = field(default_factory=dict)


def decode_requests(
    synth: Synthesis, utts: list, run_dir: Path, handle, summary: Summary, how: Decoding,
    desc: str = "synthesis", position: int = 0,
) -> None:  # fmt: skip
    """Synthesise `utts` into run_dir/<name>.wav; append each record to `summary` and, as it is
    written, to the open file `handle`; failed requests go to summary.failures."""
    prepared = _prepare(synth, utts, summary)
    bar = tqdm(total=len(prepared), desc=desc, unit="utt", disable=not how.progress,
               position=position)  # fmt: skip
    for batch in batches(prepared, how.batch_size):
        seeds = [utterance_seed(how.seed, item.utt.name) for item in batch]
        records, generate_s, decode_s = _run_batch(synth, batch, seeds, run_dir)
        summary.timings["generate"] += generate_s
        summary.timings["decode"] += decode_s
        for record in records:
            record.update(how.extra)
            _write_line(handle, record)
            summary.audio_seconds += record["seconds"]
            log.info("%s: %d frames (%.2f s, stopped by %s)", record["output"],
                     record["frames"], record["seconds"], record["stop_reason"])  # fmt: skip
        summary.records += records
        bar.update(len(batch))
    bar.close()


def write_results(run_dir: Path, utts: Sequence[Request], summary: Summary) -> Path:
    """run_dir/results.jsonl, replaced atomically: the records in list order (the order of
    `utts`), then one {"line", "error"} per failure, by line."""
    order = {utt.name: k for k, utt in enumerate(utts)}
    summary.records.sort(key=lambda record: order.get(record["name"], len(order)))
    summary.failures.sort(key=lambda f: f.line or 0)
    lines = [json.dumps(record, ensure_ascii=False) for record in summary.records]
    for failure in summary.failures:
        lines.append(
            json.dumps({"line": failure.line, "error": failure.message}, ensure_ascii=False)
        )
    return atomic_write_text(run_dir / RESULTS, "".join(f"{line}\n" for line in lines))


def log_summary(summary: Summary, where: str) -> None:
    """The run's (or a worker's) totals: utterances, audio, wall time, real-time factor, timings."""
    rtf = summary.wall / summary.audio_seconds if summary.audio_seconds else float("nan")
    log.info("%s: %d utterances, %.2f s of audio in %.2f s (real-time factor %.3f)", where,
             len(summary.records), summary.audio_seconds, summary.wall, rtf)  # fmt: skip
    log.info("%s time: %s", where, ", ".join(f"{k} {v:.2f} s" for k, v in summary.timings.items()))


def synthesize(
    synth: Synthesis,
    utts: list,
    run_dir: Path,
    failures: Sequence[Failure] = (),
    *,
    batch_size: int,
    seed: int,
    progress: bool = True,
    extra: dict | None = None,
) -> Summary:
    """Synthesise every request into run_dir/<name>.wav and write run_dir/results.jsonl: each
    record as it is written (a crash keeps those), then, at the end, the whole file in list
    order: the records, then one {"line", "error"} per failure (`failures` from reading the
    list, and those of this run), by line (`write_results`). `extra`: fields of every record."""
    start = time.perf_counter()
    summary = Summary(failures=list(failures))
    how = Decoding(batch_size, seed, progress, dict(extra or {}))
    with open(run_dir / RESULTS, "w", encoding="utf-8") as results:
        decode_requests(synth, utts, run_dir, results, summary, how)
    results = write_results(run_dir, utts, summary)
    summary.wall = time.perf_counter() - start
    log_summary(summary, str(results))
    return summary


def _write_line(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
