"""Recipe stage 4: score a stage-3 output folder (WER/CER, SIM-o/SIM-r, DNSMOS).

    python bins/tts/evaluate.py --config C --input_dir DIR [--output_dir OUT]

(`egs/tts/VALLE/run.sh --stage 4 --eval_input_dir DIR` calls this.) DIR holds stage 3's
`results.jsonl` (and `run.json`, naming the weights: then SIM-r uses their codec and the summary
goes to the experiment's tensorboard). Backends, models, batch size and device come from the
`evaluation` section of --config, overridden by the options below. Writes OUT/metrics.jsonl
(appended; a re-run skips what is already scored with the same backends), OUT/summary.json and
OUT/summary.md (OUT defaults to DIR/eval). Exit status 1 when any utterance failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from bins.tts._cli import run_reporting, str2bool
from evaluation.backends import BackendError, load_backend
from evaluation.scoring import (
    EvaluationError,
    Scorer,
    read_results,
    same_speaker_similarity,
    score_all,
)
from evaluation.summary import summarise, write_summary, write_tensorboard
from models.tts.valle.inference import InferenceError, find_model_source
from utils.checkpoint import CheckpointError, read_meta
from utils.config import ConfigError, load_config, read_json5
from utils.config_parler import load_parler_config
from utils.toktts_config import load_toktts_config

log = logging.getLogger("evaluate")
# --recipe -> its config loader (Parler-TTS / TokTTS records have no prompt audio: no SIM-o from a
# prompt, no SIM-r; Parler-TTS scores same-speaker similarity instead)
CONFIG_LOADERS = {"valle": load_config, "parler": load_parler_config, "toktts": load_toktts_config}
OVERRIDES = {"asr": str, "asr_model": str, "sim": str, "sim_model": str, "mos": str}
OVERRIDES.update(batch_size=int, device=str, sim_r=str2bool)
NOISE_WARNING = (
    "!!! %s was made with a RANDOM-INIT codec: its audio is noise, and so are these numbers "
    "(pipeline check only). !!!"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score a stage-3 output folder (recipe stage 4)")
    p.add_argument("--config", required=True, type=Path, help="recipe config (evaluation section)")
    p.add_argument("--input_dir", required=True, type=Path, help="folder with results.jsonl")
    p.add_argument("--output_dir", type=Path, default=None, help="[INPUT_DIR/eval]")
    p.add_argument("--progress", type=str2bool, default=True, help="tqdm progress bar [true]")
    p.add_argument("--recipe", choices=list(CONFIG_LOADERS), default="valle", help="config kind")
    for name, kind in OVERRIDES.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=f"[evaluation.{name}]")
    return p.parse_args(argv)


def load_scorer(ev, device: str, source) -> Scorer:
    """The configured backends (+ SIM-r when the run's weights are known)."""
    asr = load_backend("asr", ev.asr, ev.asr_model, device)
    sim = load_backend("sim", ev.sim, ev.sim_model, device)
    mos = load_backend("mos", ev.mos, "", device) if ev.mos != "none" else None
    if source is None or not ev.sim_r:
        log.info("SIM-r not computed: %s", "disabled" if source else "the model is not known")
        return Scorer(asr, sim, mos)
    from evaluation.resynthesis import prompt_resynthesiser

    resynth, codec = prompt_resynthesiser(source, device)
    return Scorer(asr, sim, mos, resynth, codec)


def run_info(input_dir: Path, cfg) -> tuple[dict, object]:
    """Stage 3's run.json ({} when absent) and the model it names (None when not found)."""
    path = input_dir / "run.json"
    if not path.is_file():
        log.info("%s: no run.json (not written by stage 3): no SIM-r, no tensorboard", input_dir)
        return {}, None
    info = read_json5(path)
    try:
        return info, find_model_source(Path(info["weights"]).parent, "latest", cfg)
    except (KeyError, TypeError, InferenceError, CheckpointError, ConfigError) as e:
        log.warning("%s: the model that wrote this folder is not usable (%s): no SIM-r, no "
                    "tensorboard", path, e)  # fmt: skip
        return info, None


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    cfg = CONFIG_LOADERS[args.recipe](args.config, overrides={"evaluation": overrides})
    ev = cfg.evaluation
    out_dir = args.output_dir or args.input_dir / "eval"
    items, failures = read_results(args.input_dir / "results.jsonl")
    for f in failures:
        log.error("%s: %s", f["name"], f["error"])
    log.info("%s: %d utterances to score, %d bad lines", args.input_dir, len(items), len(failures))
    device = ev.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # TokTTS: no prompt to resynthesise (SIM-o is against the stage-3 reference recording)
    info, source = run_info(args.input_dir, cfg) if args.recipe == "valle" else ({}, None)
    scorer = load_scorer(ev, device, source)
    for kind, what in scorer.backends.items():
        log.info("%s: %s", kind, what)
    results = score_all(items, scorer, out_dir / "metrics.jsonl", ev.batch_size, args.progress)
    same = same_speaker_similarity(items, scorer.sim, ev.batch_size)  # records naming speakers
    records = [dict(results[it.name], **({"sim_speaker": same[it.name]} if it.name in same else {}))
               for it in items]  # fmt: skip
    summary = summarise(records, failures, scorer.backends)
    table = write_summary(out_dir, summary, args.input_dir.name)
    if source is not None and source.kind != "release":
        step = int(read_meta(source.weights.parent).get("step", 0))
        write_tensorboard(source.root / "tensorboard", summary, args.input_dir.name, step)
        log.info("tensorboard: eval/%s/* at step %d in %s", args.input_dir.name, step, source.root)
    log.info(
        "wrote %s, %s, %s", *(out_dir / n for n in ("metrics.jsonl", "summary.json", "summary.md"))
    )
    print(table, end="")
    if info.get("random_init_codec"):
        log.warning(NOISE_WARNING, args.input_dir)
    for f in summary["failed"]:
        log.error("FAILED %s: %s", f["name"], f["error"])
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    expected = (EvaluationError, BackendError, ConfigError, InferenceError, CheckpointError)
    return run_reporting(run, parse_args(argv), expected, log)


if __name__ == "__main__":
    sys.exit(main())
