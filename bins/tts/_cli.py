"""What the stage entry points share: boolean options and main's logging + error reporting."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path


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
