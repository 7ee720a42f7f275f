"""Recipe stage 1 (`run.sh --stage 1`): lhotse manifests, phonemes and EnCodec tokens.

    python bins/tts/preprocess.py --config CONFIG [--gpu 0,1] [--num_workers N]

All settings come from the config's `preprocess` section (see preprocessors/pipeline.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from models.codec.encodec import CodecError
from preprocessors.corpora import CorpusError
from preprocessors.pipeline import StageError, run_stage1
from text.g2p import G2PError
from utils.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="json5 recipe config")
    parser.add_argument("--gpu", default="", help="GPU ids, e.g. 0,1 (default: all; CPU if none)")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="worker processes per device (default: preprocess.num_workers)",
    )
    return parser.parse_args(argv)


def choose_devices(gpu: str) -> list[str]:
    """--gpu ids -> torch devices. run.sh exports CUDA_VISIBLE_DEVICES=<ids>, which renumbers
    the visible GPUs from 0, so the ids map to cuda:0..k-1 then."""
    if not torch.cuda.is_available():
        if gpu:
            logging.warning("--gpu %s given but CUDA is not available: running on CPU", gpu)
        return ["cpu"]
    if not gpu:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    ids = [int(x) for x in gpu.split(",") if x.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(" ", "") == gpu.replace(" ", ""):
        return [f"cuda:{i}" for i in range(len(ids))]
    return [f"cuda:{i}" for i in ids]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    try:
        cfg = load_config(args.config)
        workers = args.num_workers if args.num_workers is not None else cfg.preprocess.num_workers
        if workers < 1:
            raise ConfigError(f"--num_workers must be >= 1 (got {workers})")
        run_stage1(cfg, choose_devices(args.gpu), workers)
    except (ConfigError, CorpusError, CodecError, StageError, G2PError) as e:
        print(f"preprocess.py: ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "preprocess.py: interrupted; re-run to resume (finished shards are kept)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
