"""Parler-TTS recipe stage 1: lhotse manifests, DAC codes, descriptions and token ids.

    [CUDA_VISIBLE_DEVICES=0,1] python bins/tts/parler_preprocess.py --config C [--num_workers N]

All settings come from the config's `preprocess` section and `model.pretrained` (the released-
layout Parler-TTS folder or hub id whose tokenizer makes the ids and, with preprocess.codec = "",
whose DAC makes the codes); see preprocessors/parler_pipeline.py. Work is split over every
visible GPU (run.sh's --gpu sets CUDA_VISIBLE_DEVICES), else the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bins.tts._cli import add_stage1_options, choose_devices, run_reporting, stage1_workers
from models.codec.dac import CodecError
from models.tts.parler.pretrained import ParlerLoadError, load_tokenizer, resolve_folder
from preprocessors.annotate import AnnotationError
from preprocessors.corpora import CorpusError
from preprocessors.parler_pipeline import ParlerStageError, corpus_roots, run_parler_stage1
from text.g2p import G2PError
from utils.config_loader import ConfigError, resolve_path
from utils.config_parler import load_parler_config

log = logging.getLogger("parler_preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stage1_options(parser, "DAC")
    return parser.parse_args(argv)


def model_folder(pretrained: str) -> Path:
    """`model.pretrained` as a local folder: a path (relative = repository root) or a hub id."""
    path = resolve_path(pretrained)
    return resolve_folder(str(path) if path.is_dir() else pretrained)


def run(args: argparse.Namespace) -> int:
    cfg = load_parler_config(args.config)
    workers = stage1_workers(args.num_workers, cfg.preprocess.num_workers)
    corpus_roots(cfg)  # wrong corpus paths fail before the model is fetched
    folder = model_folder(cfg.model.pretrained)
    try:
        run_parler_stage1(cfg, folder, load_tokenizer(folder), choose_devices(), workers)
    except KeyboardInterrupt:
        log.error("interrupted; re-run to resume (finished shards are kept)")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    expected = (ConfigError, CorpusError, CodecError, ParlerStageError, ParlerLoadError,
                G2PError, AnnotationError)  # fmt: skip
    return run_reporting(run, parse_args(argv), expected, log)


if __name__ == "__main__":
    sys.exit(main())
