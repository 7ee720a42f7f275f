"""Export a Parler-TTS experiment as a released-layout folder.

    python bins/tts/parler_export.py --expt_dir exp/parler/EXP --output_dir OUT [--checkpoint best]

OUT then holds config.json, generation_config.json, the tokenizer files and model.safetensors
with every tensor under the package's names plus the experiment's DAC (`audio_encoder.model.*`):
what `parler-tts/...` folders hold, readable by models.tts.parler.pretrained.load_pretrained,
by stage 3 (`--infer_expt_dir OUT`) and by the parler-tts package. Written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bins.tts._cli import run_reporting
from models.codec.dac import CodecError
from models.tts.parler.pretrained import ParlerLoadError
from models.tts.parler.trainer import export_release

log = logging.getLogger("export")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a Parler-TTS experiment (released layout)")
    p.add_argument("--expt_dir", required=True, type=Path, help="experiment or checkpoint folder")
    p.add_argument("--output_dir", required=True, type=Path, help="the folder to write")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    export_release(args.expt_dir, args.output_dir, args.checkpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv), (ParlerLoadError, CodecError), log)


if __name__ == "__main__":
    sys.exit(main())
