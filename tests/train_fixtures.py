"""Helpers of the training tests: a small fake stage-1 output, a tiny config, a subprocess runner.

The fake stage-1 output has the layout of docs/ARCHITECTURE.md (symbols.dict, codec/codec.json,
libritts/cuts_{train,valid}.NNNNNN.jsonl.gz + index, or the older one-file layout, with
`custom["phones"]` and a `codes` TemporalArray stored with a lhotse writer), so the dataset and
trainer read it exactly like the real one, without waiting for espeak-ng and a codec.

Run as a script, it trains in this process with test hooks (used through subprocesses so that a
real SIGTERM / SIGKILL can hit it):

    python tests/train_fixtures.py [--sigterm_at_step K [--sigterm_rank R]]
        [--wait_for_signal_at_step K] [--hang_in_save_at_step K] [--record_dropout DIR]
        [--cpu_fp16] -- TRAIN ARGS

(also under `torch.distributed.run`, which swallows the `--`: the hooks are told apart by name).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHONES = list("abcdefghijklmnop")
HOP = 320 / 24000


def make_stage1(
    root: Path,
    n_train: int = 8,
    n_valid: int = 2,
    seed: int = 0,
    frames: tuple[int, int] = (16, 32),
    num_phones: tuple[int, int] = (4, 9),
    codec_name: str = "encodec_24khz",
    layout: str = "shards",
) -> Path:
    """Write a fake stage-1 output under root; return root. `layout`: "shards" = today's stage 1
    (cut i of a split in shard i % 3, an index per split: utils/cut_shards.py), "single" = one
    eager cuts_<split>.jsonl.gz per split (stage-1 MANIFEST_FORMAT <= 2)."""
    from lhotse import CutSet, MonoCut
    from lhotse.features.io import NumpyFilesWriter

    from utils.cut_shards import write_split

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "symbols.dict").write_text(
        "<eps> 0\n" + "".join(f"{p} {i}\n" for i, p in enumerate(PHONES, 1)), encoding="utf-8"
    )
    (root / "codec").mkdir(exist_ok=True)
    codec = {"name": codec_name, "sample_rate": 24000, "bandwidth": 6.0, "num_quantizers": 8}
    (root / "codec" / "codec.json").write_text(json.dumps(codec), encoding="utf-8")
    out = root / "libritts"
    out.mkdir(exist_ok=True)
    with NumpyFilesWriter(str(out / "codes")) as writer:
        for split, n in (("train", n_train), ("valid", n_valid)):
            cuts = []
            for i in range(n):
                cut_id = f"{split}_{i:03d}"
                t = int(rng.integers(frames[0], frames[1] + 1))
                codes = rng.integers(0, 1024, size=(t, 8)).astype(np.int16)
                phones = [
                    PHONES[k] for k in rng.integers(0, len(PHONES), rng.integers(*num_phones))
                ]
                cut = MonoCut(id=cut_id, start=0.0, duration=t * HOP, channel=0)
                cut.custom = {"phones": phones}
                cut.codes = writer.store_array(cut_id, codes, frame_shift=HOP, temporal_dim=0)
                cuts.append(cut)
            if layout == "single":
                CutSet.from_cuts(cuts).to_file(out / f"cuts_{split}.jsonl.gz")
            else:
                write_split(out, split, {k: cuts[k::3] for k in range(min(3, n))})
    return root


def write_config(path: Path, processed_dir: Path, log_dir: Path, model=None, train=None) -> Path:
    """A tiny-model recipe config (json) over the fake stage-1 output."""
    cfg = {
        "base_config": str(REPO / "config" / "valle.json"),
        "dataset": ["libritts"],
        "log_dir": str(log_dir),
        "preprocess": {"processed_dir": str(processed_dir), "min_duration": 0.1},
        "model": {
            "text_token_num": 32,
            "decoder_dim": 32,
            "nhead": 2,
            "num_decoder_layers": 1,
            "prefix_mode": 1,
            "dropout": 0.1,
            **(model or {}),
        },
        "train": {
            "batch_size": 3,
            "max_epoch": 0,
            "max_steps": 8,
            "base_lr": 1e-3,
            "warmup_steps": 2,
            "total_training_steps": 20,
            "valid_interval": 0,
            "save_interval": 0,
            "log_interval": 1,
            "num_workers": 0,
            "keep_last": 2,
            "random_seed": 7,
            **(train or {}),
        },
    }
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def exp_config(tmp_path: Path, processed: Path, model=None, **train) -> Path:
    """tmp_path/c.json over `processed`, experiments in tmp_path/exp (`train` keys as kwargs)."""
    return write_config(tmp_path / "c.json", processed, tmp_path / "exp", model, train)


def train_args(cfg: Path, name: str, *extra: str) -> list[str]:
    return ["--config", str(cfg), "--exp_name", name, *extra]


def check_ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def last_weights(exp_dir: Path) -> dict:
    from safetensors.torch import load_file

    from utils.checkpoint import list_checkpoints

    return load_file(str(list_checkpoints(exp_dir)[-1] / "model.safetensors"))


def read_log(exp_dir: Path) -> dict[int, dict]:
    """train_log.jsonl as {step: record}; later lines win (a resumed run appends)."""
    records = {}
    for line in (exp_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        records[rec["step"]] = rec
    return records


def run_training(args: list[str], hooks: list[str] = (), timeout: float = 300, **popen):
    """Train in a subprocess with 1 torch thread: CompletedProcess, or Popen if wait=False."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *hooks, "--", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if popen.pop("wait", True) is False:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _runner(argv: list[str]) -> int:
    import logging

    import torch

    from models.base import train_loop, train_state
    from models.base import trainer as engine
    from models.tts.valle import trainer

    p = argparse.ArgumentParser()
    p.add_argument("--sigterm_at_step", type=int, default=0)
    p.add_argument("--sigterm_rank", type=int, default=-1, help="only this rank signals itself")
    p.add_argument("--wait_for_signal_at_step", type=int, default=0,
                   help="after step K, print WAITING, wait for a signal, then 1.5 s")  # fmt: skip
    p.add_argument("--hang_in_save_at_step", type=int, default=0)
    p.add_argument("--record_dropout", default="", help="save each rank's first dropout mask")
    p.add_argument("--cpu_fp16", action="store_true", help="accelerate's fp16 path on the CPU")
    hooks, train_args = p.parse_known_args(argv)  # the rest (after an optional --) is training's
    train_args = [a for a in train_args if a != "--"]
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)

    if hooks.sigterm_at_step or hooks.wait_for_signal_at_step:
        hook_log_step(train_loop, hooks)

    if hooks.hang_in_save_at_step:
        save_checkpoint = train_state.save_checkpoint

        def hanging_save(exp_dir, name, weights, meta, state):
            if meta["step"] != hooks.hang_in_save_at_step:
                return save_checkpoint(exp_dir, name, weights, meta, state)
            from safetensors.torch import save_model

            from utils.checkpoint import atomic_directory

            with atomic_directory(Path(exp_dir) / "checkpoint" / name) as tmp:
                save_model(weights, str(tmp / "model.safetensors"))
                print("HANGING IN SAVE", flush=True)
                time.sleep(600)  # the test kills us with SIGKILL here

        train_state.save_checkpoint = hanging_save
    if hooks.record_dropout:
        record_first_dropout_mask(trainer, Path(hooks.record_dropout))
    if hooks.cpu_fp16:
        cpu_fp16_accelerator(engine)
    return trainer.main(train_args)


def hook_log_step(train_loop, hooks: argparse.Namespace) -> None:
    """After the optimizer step K: signal this process (every rank, or --sigterm_rank only),
    or wait for a signal from outside (the test's, to the whole process group)."""
    log_step = train_loop.log_step
    rank = int(os.environ.get("RANK", "0"))

    def log_step_then_signal(run, *a, **k):
        log_step(run, *a, **k)
        if run.step == hooks.sigterm_at_step and hooks.sigterm_rank in (-1, rank):
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal through the real handler
        if run.step == hooks.wait_for_signal_at_step:
            print(f"WAITING FOR A SIGNAL AT STEP {run.step} ON RANK {rank} PID {os.getpid()}",
                  flush=True)  # fmt: skip
            while not run.stop_signal:
                time.sleep(0.05)
            time.sleep(1.5)  # still inside the step when a launcher's forwarded repeat comes

    train_loop.log_step = log_step_then_signal


def record_first_dropout_mask(trainer, out_dir: Path) -> None:
    """Save the mask of the first training-mode dropout call of this rank (a forward hook: it
    draws no random number) to out_dir/rank<R>.pt."""
    import torch

    build_model = trainer.build_model

    def build_and_hook(*a, **k):
        model, trainable = build_model(*a, **k)
        dropout = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)

        def hook(module, inputs, output):
            if module.training and not hasattr(hook, "done"):
                hook.done = True
                mask = (output == 0) & (inputs[0] != 0)
                out_dir.mkdir(parents=True, exist_ok=True)
                torch.save(mask.flatten()[:512], out_dir / f"rank{os.environ.get('RANK', '0')}.pt")

        dropout.register_forward_hook(hook)
        return model, trainable

    trainer.build_model = build_and_hook


def cpu_fp16_accelerator(engine) -> None:
    """accelerate refuses fp16 on the CPU; give it a CPU GradScaler and fp16 autocast anyway so
    that the recipe's fp16 code path (scaled backward, unscale in clip, scaler-skipped updates,
    scaler state in checkpoints) runs here. A scale that grows every 2 steps makes the
    scaler skip updates now and then, as it does on a GPU."""
    import torch

    make_accelerator = engine.make_accelerator

    def make(cfg):
        acc = make_accelerator(cfg)
        acc.state._mixed_precision = "fp16"
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
        return acc

    engine.make_accelerator = make


if __name__ == "__main__":
    sys.exit(_runner(sys.argv[1:]))
