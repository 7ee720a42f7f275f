"""Recipe stage 3 for Parler-TTS: one utterance, or a whole test list, at 44.1 kHz.

    python bins/tts/parler_inference.py --config C --expt_dir DIR --mode single \
        --description "A calm female voice ..." --text "..."
    python bins/tts/parler_inference.py --config C --expt_dir DIR --mode batch --test_list_file L

(`egs/tts/ParlerTTS/run.sh --stage 3 --infer_...` calls this.) DIR is one of our experiments
(newest checkpoint, or `--checkpoint best`), one checkpoint folder, a released-layout folder or
a hub id (`parler-tts/parler-tts-mini-v1`; offline: place its files in a folder and name that).
A test list has `description|text[|name]` per line. Decoding options come from the `inference`
section of --config, overridden by the options below (models/tts/parler/inference.py, over the
shared shell models/base/inference.py). Outputs: OUT/<mode>/<name>.wav, results.jsonl (one line
per utterance and per failed line), run.json; OUT defaults to DIR/result (a release:
<log_dir>/<its last name>/result). A bad line is reported with its number, the others still
run, and the exit status is 1.

As in VALL-E's stage 3 (bins/tts/inference.py): a list is split over --num_workers processes
(default: one per visible GPU, 1 without; models/base/inference_split.py) with the output of a
one-process run line for line, and --avg N / NAME,NAME decodes with the mean of those
checkpoints' weights (utils/checkpoint_average.py; a released folder: 1 only).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

from bins.tts._cli import (
    claim_output,
    decode_all,
    parse_stage3,
    read_requests,
    run_reporting,
    str2bool,
    synthesis_factory,
)
from models.base.inference import Failure, InferenceError, safe_name
from models.tts.parler.inference import (
    Request,
    find_model_source,
    load_codec,
    load_synthesizer,
    parse_line,
)
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, resolve_path
from utils.config_parler import load_parler_config

log = logging.getLogger("inference")
OVERRIDES = {"checkpoint": str, "top_k": int, "top_p": float, "temperature": float, "seed": int}
OVERRIDES.update(batch_size=int, max_new_tokens=int, do_sample=str2bool, codec=str)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Parler-TTS inference (recipe stage 3)")
    p.add_argument("--config", required=True, type=Path, help="recipe config (inference section)")
    p.add_argument("--expt_dir", required=True, help="experiment/checkpoint/release folder/hub id")
    p.add_argument("--description", default="", help="single mode: how the voice sounds")
    p.add_argument("--text", default="", help="single mode: text to speak")
    return parse_stage3(p, argv, OVERRIDES)


def requests(args: argparse.Namespace) -> tuple[list[Request], list[Failure]]:
    if args.mode == "batch":
        return read_requests(args.test_list_file, parse_line, log)
    if not args.description.strip() or not args.text.strip():
        raise InferenceError("--mode single needs --description and --text")
    text = args.text.strip()
    return [Request(safe_name(text), args.description.strip(), text)], []


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    cfg = load_parler_config(args.config, {"inference": overrides})
    inf = cfg.inference
    utts, failures = requests(args)
    source = find_model_source(args.expt_dir, inf.checkpoint, inf.codec, args.avg)
    checkpoints = [str(p) for p in source.checkpoints or [source.weights.parent]]
    log.info("model: %s; weights: %s", source.describe(), ", ".join(checkpoints))
    setup = synthesis_factory(args, functools.partial(load_synthesizer, source, inf))
    codec = setup[2].codec if setup[2] else load_codec(source, "cpu")
    log.info("decoding: do_sample=%s top_k=%d top_p=%g temperature=%g seed=%d batch_size=%d "
             "max_new_tokens=%d kv_cache=%s", inf.do_sample, inf.top_k, inf.top_p,
             inf.temperature, inf.seed, inf.batch_size, inf.max_new_tokens,
             inf.use_kv_cache)  # fmt: skip
    # a release (folder or hub id): <log_dir>/<its last name>, e.g. exp/parler/parler-tts-mini-v1
    default_out = source.root
    if source.kind == "release":
        default_out = resolve_path(cfg.log_dir) / Path(str(args.expt_dir)).name
    run_dir = claim_output(args, default_out, {
        "kind": source.kind, "root": str(source.root), "weights": str(source.weights),
        "checkpoints": checkpoints, "config": str(args.config),
        "random_init_codec": codec.is_random_init})  # fmt: skip
    summary = decode_all(args, setup, utts, run_dir, failures, inf, {"checkpoints": checkpoints})
    if summary.failures:
        listed = "\n".join(f"  {f}" for f in summary.failures)
        log.error("%d failed:\n%s", len(summary.failures), listed)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    expected = (InferenceError, ConfigError, CheckpointError)
    return run_reporting(run, parse_args(argv), expected, log)


if __name__ == "__main__":
    sys.exit(main())
