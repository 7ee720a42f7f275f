"""What the stage entry points share: boolean options and main's logging + error reporting."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable


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
