"""What the stage entry points share: boolean options, main's logging + error reporting, stage 1's
options, devices and Ctrl-C, stage 3's options."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from utils.config_loader import ConfigError


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


def parse_stage3(p: argparse.ArgumentParser, argv: list[str] | None, overrides: dict):
    """Add the options every recipe's stage 3 takes (mode, output folder, test list, device,
    progress bar, run-dir file; `overrides`: inference key -> type, None = the config's) to the
    recipe's parser `p`, then parse `argv`."""
    p.add_argument("--mode", required=True, choices=["single", "batch"])
    p.add_argument("--output_dir", type=Path, default=None, help="[EXPT_DIR/result]")
    p.add_argument("--overwrite", type=str2bool, default=False, help="reuse OUT/<mode> [false]")
    p.add_argument("--test_list_file", type=Path, default=None, help="batch mode list")
    p.add_argument("--device", default=None, help="every worker's device [GPUs, else cpu]")
    p.add_argument("--progress", type=str2bool, default=True, help="tqdm progress bar [true]")
    p.add_argument("--run_dir_file", type=Path, default=None, help="write the run dir's path here")
    for name, kind in overrides.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=f"[inference.{name}]")
    args = p.parse_args(argv)
    if args.mode == "batch" and args.test_list_file is None:
        p.error("--mode batch needs --test_list_file")
    return args
