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

As in VALL-E's stage 3 (bins/tts/inference.py): a list is split over --num_workers processes
(default: one per visible GPU, 1 without; models/base/inference_split.py) with the output of a
one-process run line for line, and --avg N / NAME,NAME decodes with the mean of those
checkpoints' weights (utils/checkpoint_average.py; an exported model folder: 1 only).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import torch

from bins.tts._cli import (
    add_stage3_options,
    claim_output,
    decode_all,
    read_requests,
    run_reporting,
    str2bool,
    synthesis_factory,
)
from models.base.inference import InferenceError, safe_name
from models.codec.encodec import CodecTokenizer
from models.tts.toktts.inference import (
    TextRequest,
    TokTTSSynthesis,
    default_reference,
    parse_line,
)
from models.tts.toktts.pipeline import ModelDirError, ModelSource, find_model, load_source
from utils.checkpoint import CheckpointError
from utils.config import InferenceConfig
from utils.config_loader import ConfigError
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
    p.add_argument(
        "--reference_audio",
        type=Path,
        help="stage 4's SIM-o reference [the experiment's first valid utterance]",
    )
    add_stage3_options(p, SETTINGS)
    args = p.parse_args(argv)
    if bool(args.text.strip()) == (args.test_list_file is not None):
        p.error("give either --text (single mode) or --test_list_file (batch mode)")
    args.mode = "batch" if args.test_list_file is not None else "single"
    return args


def make_synthesis(
    source: ModelSource, inf: InferenceConfig, reference: Path | None, device: torch.device
) -> TokTTSSynthesis:
    """Model, character table and codec on `device` (in each worker process)."""
    model, chars, codec = load_source(source, device)
    return TokTTSSynthesis(model, chars, codec, inf, source.normalize_text, reference)


def run(args: argparse.Namespace) -> int:
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    inf = load_toktts_config(args.config, {"inference": settings}).inference
    if args.mode == "single":
        utts, failures = [TextRequest(safe_name(args.text), args.text.strip())], []
    else:
        utts, failures = read_requests(args.test_list_file, parse_line, log)
    source = find_model(args.expt_dir, inf.checkpoint, args.avg)
    checkpoints = [str(p) for p in source.checkpoints or [source.weights.parent]]
    log.info("model: %s %s (weights: %s)", source.kind, source.root, ", ".join(checkpoints))
    reference = args.reference_audio or default_reference(source.root)
    if reference is not None and not reference.is_file():
        raise InferenceError(f"--reference_audio {reference}: no such file")
    log.info("reference voice (SIM-o in stage 4): %s", reference or "none")
    setup = synthesis_factory(args, functools.partial(make_synthesis, source, inf, reference))
    codec = setup[2].codec if setup[2] else CodecTokenizer.from_processed_dir(source.root)
    random_codec = codec.is_random_init
    log.info("decoding: top_k=%d top_p=%g temperature=%g seed=%d batch_size=%d max_frames=%d "
             "max_seconds=%g", inf.top_k, inf.top_p, inf.temperature, inf.seed, inf.batch_size,
             inf.max_frames, inf.max_seconds)  # fmt: skip
    run_dir = claim_output(args, args.expt_dir, {
        "kind": source.kind, "root": str(source.root), "weights": str(source.weights),
        "checkpoints": checkpoints, "config": str(args.config),
        "random_init_codec": random_codec})  # fmt: skip
    summary = decode_all(args, setup, utts, run_dir, failures, inf, {"checkpoints": checkpoints})
    if random_codec:
        log.warning("the codec is RANDOM-INIT: the audio in %s is meaningless noise", run_dir)
    for failure in summary.failures:
        log.error("FAILED %s%s", f"{args.test_list_file}: " * (args.mode == "batch"), failure)
    return 1 if summary.failures else 0


def main(argv: list[str] | None = None) -> int:
    expected = (InferenceError, ConfigError, CheckpointError, ModelDirError)
    return run_reporting(run, parse_args(argv), expected, log)


if __name__ == "__main__":
    sys.exit(main())
