"""TokTTS recipe stage 1 (`egs/tts/TokTTS/run.sh --stage 1`): manifests, first-seconds EnCodec
tokens (2 codebooks, 1.5 kbps), the character table.

    [CUDA_VISIBLE_DEVICES=0] python bins/tts/toktts_preprocess.py --config CONFIG

All settings come from the config (preprocessors/toktts_data.py); the codec runs on the first
visible GPU, else the CPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bins.tts._cli import run_stage1_printing
from models.codec.encodec import CodecError
from preprocessors.corpora import CorpusError
from preprocessors.pipeline import StageError
from preprocessors.toktts_data import Stage1Error, run_stage1
from utils.config_loader import ConfigError
from utils.toktts_config import load_toktts_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="json5 TokTTS recipe config")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = load_toktts_config(args.config)
        run_stage1(cfg, "cuda:0" if torch.cuda.is_available() else "cpu")

    expected = (ConfigError, CorpusError, CodecError, StageError, Stage1Error)
    return run_stage1_printing("toktts_preprocess.py", run, expected)


if __name__ == "__main__":
    sys.exit(main())
