"""Recipe stage 1 (`run.sh --stage 1`): lhotse manifests, phonemes and EnCodec tokens.

    [CUDA_VISIBLE_DEVICES=0,1] python bins/tts/preprocess.py --config CONFIG [--num_workers N]
        [--nj N [--job_index I]]

All settings come from the config's `preprocess` section (see preprocessors/pipeline.py). Work
is split over every visible GPU (run.sh's --gpu sets CUDA_VISIBLE_DEVICES), else the CPU.
Across machines (Kaldi-style jobs over a shared processed_dir): `--nj N --job_index I` encodes
job I's shards only (shard k of the plan belongs to job k % N) and does not merge; `--nj N`
without --job_index is the merge (encodes nothing, fails naming missing shards and their jobs).
"""

from __future__ import annotations

import argparse
import sys

from bins.tts._cli import add_stage1_options, choose_devices, run_stage1_printing, stage1_workers
from models.codec.encodec import CodecError
from preprocessors.corpora import CorpusError
from preprocessors.pipeline import StageError, run_stage1
from text.g2p import G2PError
from utils.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stage1_options(parser, "codec")
    parser.add_argument(
        "--nj", type=int, default=1, help="jobs stage 1 is split into (default 1: everything)"
    )
    parser.add_argument(
        "--job_index",
        type=int,
        default=None,
        help="with --nj N: this job (0 .. N-1) encodes its shards only; omit it to merge",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> None:
        cfg = load_config(args.config)
        workers = stage1_workers(args.num_workers, cfg.preprocess.num_workers)
        if args.job_index is not None and args.nj < 2:
            raise ConfigError(f"--job_index {args.job_index} needs --nj > 1 (got --nj {args.nj})")
        run_stage1(cfg, choose_devices(), workers, args.nj, args.job_index, args.config)

    expected = (ConfigError, CorpusError, CodecError, StageError, G2PError)
    return run_stage1_printing("preprocess.py", run, expected)


if __name__ == "__main__":
    sys.exit(main())
