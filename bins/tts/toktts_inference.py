"""TokTTS recipe stage 3 (`egs/tts/TokTTS/run.sh --stage 3`): text -> speech, one text or a list.

    python bins/tts/toktts_inference.py --config C --expt_dir DIR --text "Hello there."
    python bins/tts/toktts_inference.py --config C --expt_dir DIR --test_list_file list.txt

DIR: a TokTTS experiment (its newest checkpoint, or --checkpoint best), one of its checkpoint
folders, or an exported model folder (models/tts/toktts/pipeline.py). A list holds one
`text[|name]` per line (blank and # lines skipped). Decoding: the config's `inference` section
(top_k, top_p, temperature, seed, batch_size, max_seconds, max_frames, use_kv_cache, checkpoint)
overridden by the options below. Output: OUT/single/<name>.wav or OUT/batch/<name>.wav,
OUT/<mode>/results.jsonl and run.json (OUT: --output_dir, default DIR/result; a later run goes
to <mode>-2, ... unless --overwrite true). A bad line is reported with its number, the other
lines are synthesised, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from bins.tts._cli import run_reporting, str2bool
from models.base.inference import InferenceError, claim_run_dir, read_test_list, safe_name
from models.base.inference import synthesize as run_synthesis
from models.tts.toktts.inference import (
    TextRequest,
    TokTTSSynthesis,
    default_reference,
    parse_line,
)
from models.tts.toktts.pipeline import ModelDirError, find_model, load_source
from utils.checkpoint import CheckpointError
from utils.config_loader import ConfigError
from utils.fileio import atomic_write_text
from utils.toktts_config import load_toktts_config

log = logging.getLogger("inference")
# inference.<key> options of the command line and their types (None = the config's value)
SETTINGS = dict(checkpoint=str, top_k=int, top_p=float, temperature=float, seed=int)
SETTINGS.update(batch_size=int, max_seconds=float, max_frames=int, use_kv_cache=str2bool)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TokTTS text-to-speech (recipe stage 3)")
    p.add_argument("--config", required=True, type=Path, help="TokTTS recipe config")
    p.add_argument("--expt_dir", required=True, type=Path, help="experiment/checkpoint/model dir")
    p.add_argument("--text", default="", help="one text to speak (single mode)")
    p.add_argument("--test_list_file", type=Path, help="text[|name] lines (batch mode)")
    p.add_argument("--output_dir", type=Path, help="[EXPT_DIR/result]")
    p.add_argument("--overwrite", type=str2bool, default=False, help="reuse OUT/<mode> [false]")
    p.add_argument(
        "--reference_audio",
        type=Path,
        help="stage 4's SIM-o reference [the experiment's first valid utterance]",
    )
    p.add_argument("--device", help="torch device [cuda if available, else cpu]")
    p.add_argument("--progress", type=str2bool, default=True, help="progress bar [true]")
    p.add_argument("--run_dir_file", type=Path, help="write the run folder's path here")
    for key, kind in SETTINGS.items():
        p.add_argument(f"--{key}", type=kind, help=f"[inference.{key}]")
    args = p.parse_args(argv)
    if bool(args.text.strip()) == (args.test_list_file is not None):
        p.error("give either --text (single mode) or --test_list_file (batch mode)")
    args.mode = "batch" if args.test_list_file is not None else "single"
    return args


def requests(args: argparse.Namespace) -> tuple[list[TextRequest], list]:
    if args.mode == "single":
        return [TextRequest(safe_name(args.text), args.text.strip())], []
    utts, failures = read_test_list(args.test_list_file, parse_line)
    for failure in failures:
        log.error("%s: %s", args.test_list_file, failure)
    log.info("%s: %d texts, %d bad lines", args.test_list_file, len(utts), len(failures))
    return utts, failures


def run(args: argparse.Namespace) -> int:
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    inf = load_toktts_config(args.config, {"inference": settings}).inference
    utts, failures = requests(args)
    source = find_model(args.expt_dir, inf.checkpoint)
    log.info("model: %s %s (weights %s)", source.kind, source.root, source.weights)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, chars, codec = load_source(source, device)
    reference = args.reference_audio or default_reference(source.root)
    if reference is not None and not reference.is_file():
        raise InferenceError(f"--reference_audio {reference}: no such file")
    log.info("reference voice (SIM-o in stage 4): %s", reference or "none")
    synth = TokTTSSynthesis(model, chars, codec, inf, source.normalize_text, reference)
    log.info("decoding: top_k=%d top_p=%g temperature=%g seed=%d batch_size=%d max_frames=%d",
             inf.top_k, inf.top_p, inf.temperature, inf.seed, inf.batch_size,
             synth.max_frames)  # fmt: skip
    run_dir = claim_run_dir(args.output_dir or args.expt_dir / "result", args.mode, args.overwrite)
    info = {"kind": source.kind, "root": str(source.root), "weights": str(source.weights),
            "config": str(args.config), "random_init_codec": codec.is_random_init}  # fmt: skip
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
    if args.run_dir_file is not None:
        atomic_write_text(args.run_dir_file, f"{run_dir.resolve()}\n")
    summary = run_synthesis(synth, utts, run_dir, failures, batch_size=inf.batch_size,
                            seed=inf.seed, progress=args.progress)  # fmt: skip
    if codec.is_random_init:
        log.warning("the codec is RANDOM-INIT: the audio in %s is meaningless noise", run_dir)
    for failure in summary.failures:
        log.error("FAILED %s%s", f"{args.test_list_file}: " * (args.mode == "batch"), failure)
    return 1 if summary.failures else 0


def main(argv: list[str] | None = None) -> int:
    expected = (InferenceError, ConfigError, CheckpointError, ModelDirError)
    return run_reporting(run, parse_args(argv), expected, log)


if __name__ == "__main__":
    sys.exit(main())
