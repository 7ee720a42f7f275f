"""What the stage entry points share: boolean options, main's logging + error reporting, stage 1's
options, devices and Ctrl-C, and stage 3's options, test list, run folder and split over worker
processes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from models.base.inference import Failure, Summary, Synthesis, claim_run_dir, read_test_list
from models.base.inference_split import synthesize_parallel, worker_devices
from utils.config_loader import ConfigError
from utils.fileio import atomic_write_text


def str2bool(value: str) -> bool:
    """argparse type of a true/false option (true/1/yes, false/0/no, any case)."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run_reporting(
    run: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    expected: tuple[type[Exception], ...],
    log: logging.Logger,
) -> int:
    """run(args) with timestamped INFO logging; an `expected` error (bad input: config, files,
    models) is one ERROR line and exit status 1, not a traceback."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        return run(args)
    except expected as e:
        log.error("%s", e)
        return 1


def add_stage1_options(p: argparse.ArgumentParser, workers: str) -> None:
    """--config and --num_workers (`workers`: what the worker processes run) of a stage 1."""
    p.add_argument("--config", required=True, help="json5 recipe config")
    p.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help=f"{workers} worker processes per device (default: preprocess.num_workers)",
    )


def stage1_workers(option: int | None, configured: int) -> int:
    """Worker processes per device: --num_workers, else the config's preprocess.num_workers."""
    workers = option if option is not None else configured
    if workers < 1:
        raise ConfigError(f"--num_workers must be >= 1 (got {workers})")
    return workers


def choose_devices() -> list[str]:
    """Every visible GPU (CUDA_VISIBLE_DEVICES renumbers them from 0), else the CPU."""
    if not torch.cuda.is_available():
        return ["cpu"]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def run_stage1_printing(prog: str, run: Callable[[], None], expected: tuple) -> int:
    """A stage 1's main (VALL-E, TokTTS): INFO logging (an in-process caller's set-up kept), then
    run(); an `expected` error is one `PROG: ERROR: ...` line on stderr and exit status 1, Ctrl-C
    one line and 130 (finished shards are kept), not a traceback."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    try:
        run()
    except expected as e:
        print(f"{prog}: ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; re-run to resume (finished shards are kept)", file=sys.stderr)
        return 130
    return 0


def add_stage3_options(p: argparse.ArgumentParser, overrides: dict) -> None:
    """Add the options every recipe's stage 3 takes (output folder, device, progress bar,
    run-dir file, worker processes, checkpoint averaging; `overrides`: inference key -> type,
    None = the config's) to the recipe's parser `p`."""
    p.add_argument("--output_dir", type=Path, default=None, help="[EXPT_DIR/result]")
    p.add_argument("--overwrite", type=str2bool, default=False, help="reuse OUT/<mode> [false]")
    p.add_argument("--device", default=None, help="every worker's device [GPUs, else cpu]")
    p.add_argument("--progress", type=str2bool, default=True, help="tqdm progress bar [true]")
    p.add_argument("--run_dir_file", type=Path, default=None, help="write the run dir's path here")
    p.add_argument("--num_workers", type=int, default=None, help="batch: processes [GPUs or 1]")
    p.add_argument("--avg", default="1", help="mean of the last N checkpoints or of NAME,NAME [1]")
    for name, kind in overrides.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=f"[inference.{name}]")


def parse_stage3(p: argparse.ArgumentParser, argv: list[str] | None, overrides: dict):
    """`add_stage3_options`, --mode and --test_list_file added to `p`, then `argv` parsed."""
    p.add_argument("--mode", required=True, choices=["single", "batch"])
    p.add_argument("--test_list_file", type=Path, default=None, help="batch mode list")
    add_stage3_options(p, overrides)
    args = p.parse_args(argv)
    if args.mode == "batch" and args.test_list_file is None:
        p.error("--mode batch needs --test_list_file")
    return args


def read_requests(path: Path, parse_line: Callable, log: logging.Logger) -> tuple[list, list]:
    """A batch test list's good requests and its bad lines (each logged with its number)."""
    utts, failures = read_test_list(path, parse_line)
    for failure in failures:
        log.error("%s: %s", path, failure)
    log.info("%s: %d requests, %d bad lines", path, len(utts), len(failures))
    return utts, failures


def synthesis_factory(
    args: argparse.Namespace, make: Callable[[torch.device], Synthesis]
) -> tuple[list[torch.device], Callable[[torch.device], Synthesis], Synthesis | None]:
    """The devices of --num_workers / --device (single mode: one), how a worker gets its
    Synthesis, and the one built here: with one device it is built now, so that a model that
    does not load fails before an output folder is claimed; with several (None here) each
    worker process builds its own."""
    devices = worker_devices(args.num_workers if args.mode == "batch" else 1, args.device)
    if len(devices) > 1:
        return devices, make, None
    synth = make(devices[0])
    return devices, lambda device: synth, synth


def claim_output(args: argparse.Namespace, default_root: Path, info: dict) -> Path:
    """Claim OUT/<mode> (OUT: --output_dir or default_root/result), write its run.json (`info`:
    which weights made it) and its path to --run_dir_file (how run.sh chains stage 4)."""
    run_dir = claim_run_dir(args.output_dir or default_root / "result", args.mode, args.overwrite)
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
    if args.run_dir_file is not None:
        atomic_write_text(args.run_dir_file, f"{run_dir.resolve()}\n")
    return run_dir


def decode_all(
    args: argparse.Namespace,
    setup: tuple[list[torch.device], Callable[[torch.device], Synthesis], Synthesis | None],
    utts: list,
    run_dir: Path,
    failures: list[Failure],
    inf,
    extra: dict | None = None,
) -> Summary:
    """Decode `utts` into run_dir over the devices of `setup` (synthesis_factory; see
    models/base/inference_split.py: the same output per line whatever the number of workers)."""
    devices, make, _ = setup
    return synthesize_parallel(make, utts, run_dir, failures, devices=devices,
                               batch_size=inf.batch_size, seed=inf.seed, progress=args.progress,
                               extra=extra)  # fmt: skip
