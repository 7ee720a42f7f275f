"""Recipe stage 3: zero-shot VALL-E inference, one utterance or a whole test list.

    python bins/tts/inference.py --config C --expt_dir DIR --mode single \
        --text "..." --text_prompt "..." --audio_prompt prompt.wav
    python bins/tts/inference.py --config C --expt_dir DIR --mode batch --test_list_file list.txt

(`egs/tts/VALLE/run.sh --stage 3 --infer_...` calls this.) DIR is one of our experiments (newest
checkpoint, or `--checkpoint best`), one checkpoint folder, or a released Amphion VALL-E folder
(`bins/tts/download.py`). Decoding options come from the `inference` section of --config,
overridden by the options below; the model and its front end come from DIR (see
models/tts/valle/inference.py, over the shared shell models/base/inference.py).

Outputs: OUT/single/<name>.wav or OUT/batch/<name or line number>.wav (24 kHz) and
OUT/<mode>/results.jsonl (one line per utterance, and one per failure). OUT defaults to DIR/result.
A later run writes to OUT/<mode>-2, -3, ... unless --overwrite true. In batch mode a bad line is
reported with its number, the other lines still run, and the exit status is 1.

A batch list is split over --num_workers processes (default: one per visible GPU, 1 without;
models/base/inference_split.py); the output equals a one-process run line for line. --avg N
decodes with the mean of the weights of the last N checkpoints (by step, ending at the one
--checkpoint picks), --avg NAME,NAME,... the listed checkpoint folders' (see
utils/checkpoint_average.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

import torch

from bins.tts._cli import parse_stage3, run_reporting, str2bool
from models.base.inference import Failure, InferenceError, claim_run_dir, safe_name
from models.base.inference_split import synthesize_parallel, worker_devices
from models.tts.valle.inference import (
    ModelSource,
    Synthesizer,
    Utterance,
    find_model_source,
    load_codec,
    load_model,
    parse_test_list,
)
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, InferenceConfig, load_config
from utils.fileio import atomic_write_text

log = logging.getLogger("inference")

RANDOM_CODEC_WARNING = (
    "!!! The codec is RANDOM-INIT (preprocess.codec_pretrained = false): the audio written by "
    "this run is MEANINGLESS noise, only useful to test the pipeline. !!!"
)


# Command-line options that override the config's inference section, and their types.
OVERRIDES = {
    "checkpoint": str,
    "top_k": int,
    "top_p": float,
    "temperature": float,
    "seed": int,
    "batch_size": int,
    "continual": str2bool,
    "max_seconds": float,
    "trim_long_prompts": str2bool,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="VALL-E zero-shot inference (recipe stage 3)")
    p.add_argument("--config", required=True, type=Path, help="recipe config (inference section)")
    p.add_argument("--expt_dir", required=True, type=Path, help="experiment/checkpoint/release")
    p.add_argument("--text", default="", help="single mode: text to speak")
    p.add_argument("--text_prompt", default="", help="single mode: transcript of the prompt")
    p.add_argument("--audio_prompt", type=Path, default=None, help="single mode: prompt audio")
    return parse_stage3(p, argv, OVERRIDES)


def inference_overrides(args: argparse.Namespace) -> dict:
    """The `inference` keys given on the command line (checked by load_config like the file's)."""
    return {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}


def single_utterance(args: argparse.Namespace, continual: bool) -> Utterance:
    if args.audio_prompt is None or not args.text_prompt.strip():
        raise InferenceError("--mode single needs --text_prompt and --audio_prompt")
    if not continual and not args.text.strip():
        raise InferenceError("--mode single needs --text (or --continual true)")
    if not args.audio_prompt.is_file():
        raise InferenceError(f"audio prompt not found: {args.audio_prompt}")
    text = "" if continual else args.text.strip()
    name = safe_name(text or args.text_prompt)
    return Utterance(name, text, args.text_prompt.strip(), args.audio_prompt)


def write_run_info(
    run_dir: Path, args: argparse.Namespace, source: ModelSource, random_codec: bool
) -> None:
    """run.json: which weights made this folder (stage 4 finds the codec for SIM-r there), and
    the folder's path in --run_dir_file (how run.sh chains stage 3 into stage 4)."""
    info = {"kind": source.kind, "root": str(source.root), "weights": str(source.weights)}
    info.update(checkpoints=checkpoint_names(source))
    info.update(config=str(args.config), random_init_codec=random_codec)
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
    if args.run_dir_file is not None:
        atomic_write_text(args.run_dir_file, f"{run_dir.resolve()}\n")


def checkpoint_names(source: ModelSource) -> list[str]:
    """The checkpoint folders whose weights decode (several: their mean, --avg)."""
    return [str(folder) for folder in source.checkpoints or [source.weights.parent]]


def make_synthesizer(
    source: ModelSource, inf: InferenceConfig, device: torch.device
) -> Synthesizer:
    """The model, the codec and the front end on `device` (in each worker process)."""
    model = load_model(source, device)
    return Synthesizer(model, source, load_codec(source, device), inf, device)


def requests(args: argparse.Namespace, continual: bool) -> tuple[list[Utterance], list[Failure]]:
    """The utterances to synthesise (--mode single: one; batch: the test list's good lines)."""
    if args.mode == "single":
        return [single_utterance(args, continual)], []
    utts, failures = parse_test_list(args.test_list_file, continual)
    for failure in failures:
        log.error("%s: %s", args.test_list_file, failure)
    log.info("%s: %d utterances, %d bad lines", args.test_list_file, len(utts), len(failures))
    return utts, failures


def log_decoding(inf: InferenceConfig, config: Path) -> None:
    log.info(
        "decoding: top_k=%d top_p=%g temperature=%g seed=%d batch_size=%d continual=%s "
        "kv_cache=%s (from %s + command line)",
        inf.top_k, inf.top_p, inf.temperature, inf.seed, inf.batch_size, inf.continual,
        inf.use_kv_cache, config,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    recipe_cfg = load_config(args.config, overrides={"inference": inference_overrides(args)})
    inf = recipe_cfg.inference
    utts, failures = requests(args, inf.continual)
    source = find_model_source(args.expt_dir, inf.checkpoint, recipe_cfg, args.avg)
    log.info("model: %s", source.describe())
    if list(source.checkpoints) != [source.weights.parent]:  # --avg
        log.info("weights: the mean of %s", ", ".join(checkpoint_names(source)))
    devices = worker_devices(args.num_workers if args.mode == "batch" else 1, args.device)
    if len(devices) == 1 or len(utts) <= 1:  # in this process, loaded before claiming a folder
        synth = make_synthesizer(source, inf, devices[0])
        codec, make = synth.codec, lambda device: synth
    else:  # each worker loads its own copy; the parent's codec only says if it is random-init
        codec = load_codec(source, "cpu")
        make = functools.partial(make_synthesizer, source, inf)
    if codec.is_random_init:
        log.warning(RANDOM_CODEC_WARNING)
    log_decoding(inf, args.config)
    output_dir = args.output_dir or args.expt_dir / "result"
    run_dir = claim_run_dir(output_dir, args.mode, args.overwrite)
    log.info("writing to %s", run_dir)
    write_run_info(run_dir, args, source, codec.is_random_init)
    summary = synthesize_parallel(make, utts, run_dir, failures, devices=devices,
                                  batch_size=inf.batch_size, seed=inf.seed, progress=args.progress,
                                  extra={"checkpoints": checkpoint_names(source)})  # fmt: skip
    if codec.is_random_init:
        log.warning(RANDOM_CODEC_WARNING)
    if summary.failures:
        where = f"{args.test_list_file}: " if args.mode == "batch" else ""
        listed = "\n".join(f"  {where}{f}" for f in summary.failures)
        log.error("%d failed:\n%s", len(summary.failures), listed)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_reporting(run, parse_args(argv), (InferenceError, ConfigError, CheckpointError), log)


if __name__ == "__main__":
    sys.exit(main())
