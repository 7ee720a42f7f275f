"""A tiny stage-3 world shared by the inference tests (see tests/test_inference.py).

The experiment is built the way stages 1-2 leave it: a processed dir with a random-init codec
(`codec/codec.json` + weights), and `<exp>/config.json`, `symbols.dict`,
`checkpoint/<epoch-..._step-..._loss-...>/{model.safetensors, meta.json}`, `best`.
Its audio is meaningless; the tests check plumbing and determinism.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_model

from bins.tts import inference as cli
from models.codec.encodec import CodecTokenizer
from models.tts.valle.valle import VALLE
from text.g2p import phonemize
from text.symbol_table import SymbolTable, TextTokenizer
from utils.config import REPO_ROOT, load_config, save_config

SR = 24000
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Please bring the letters to the office before noon.",
    "A small boat waited at the end of the wooden pier.",
    "Music drifted from the house.",
    "Bright stars covered the sky.",
    "Go to her.",
    "One more line.",
]
CKPT_OLD = "epoch-0001_step-0000010_loss-5.000000"
CKPT_NEW = "epoch-0002_step-0000020_loss-4.000000"


def tone(seconds: float, sr: int, freq: float, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    return np.stack([mono] * channels, axis=1).astype(np.float32)


def tiny_model(seed: int, model_cfg) -> VALLE:
    torch.manual_seed(seed)
    model = VALLE(model_cfg).eval()
    with torch.no_grad():  # a random model rarely says EOS; make it stop at varied lengths
        model.ar_predict_layer.weight[model.eos_id] *= 2.0
    return model


def save_tiny_checkpoint(exp: Path, name: str, model: VALLE, model_cfg) -> None:
    """Our checkpoint format, written by hand (utils/checkpoint.py docstring)."""
    folder = exp / "checkpoint" / name
    folder.mkdir(parents=True)
    save_model(model, str(folder / "model.safetensors"))  # tied tensors once
    meta = {"format": "codectts-valle-1", "model": dataclasses.asdict(model_cfg), "step": 1}
    (folder / "meta.json").write_text(json.dumps(meta))


def build_world(root: Path) -> dict:
    """A tiny experiment, prompts in several formats, and a recipe config for decoding."""
    torch.set_num_threads(1)
    processed = root / "processed"
    codec = CodecTokenizer.build(pretrained=False, seed=0)
    codec.kmeans_init_([torch.from_numpy(tone(2.0, SR, 220.0, 0)[:, 0])])
    codec.save(processed / "codec")

    exp = root / "exp" / "tiny"
    phones = {p for seq in phonemize(TEXTS + ["prompt " + t for t in TEXTS]) for p in seq}
    table = SymbolTable.from_symbols(phones)
    table.to_file(exp / "symbols.dict")
    vocab = TextTokenizer(table).vocab_size
    overrides = {
        "preprocess": {"processed_dir": str(processed), "codec_pretrained": False},
        "model": {
            "decoder_dim": 16,
            "nhead": 2,
            "num_decoder_layers": 1,
            "text_token_num": vocab,
            "prefix_mode": 1,
            "dropout": 0.0,
        },
        "inference": {"top_k": 50},  # an experiment's own inference section is NOT used
    }
    cfg = load_config(REPO_ROOT / "config" / "valle.json", overrides=overrides)
    save_config(cfg, exp / "config.json")
    save_tiny_checkpoint(exp, CKPT_OLD, tiny_model(1, cfg.model), cfg.model)
    save_tiny_checkpoint(exp, CKPT_NEW, tiny_model(0, cfg.model), cfg.model)
    (exp / "best").write_text(CKPT_OLD + "\n")

    prompts = root / "lists" / "prompts"
    prompts.mkdir(parents=True)
    sf.write(prompts / "a.wav", tone(1.2, SR, 200.0, 1), SR)
    sf.write(prompts / "b.flac", tone(1.0, 16000, 300.0, 2, channels=2), 16000)
    sf.write(prompts / "long.wav", tone(3.0, 22050, 250.0, 3), 22050)
    (prompts / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")

    recipe = root / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "base_config": str(REPO_ROOT / "config" / "valle.json"),
                "inference": {
                    "top_k": 1,
                    "batch_size": 2,
                    "max_frames_per_phone": 1.0,
                    "max_seconds": 0.6,
                    "max_prompt_seconds": 1.5,
                },
            }
        )
    )
    return {"root": root, "exp": exp, "prompts": prompts, "recipe": recipe, "cfg": cfg}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_sh_argv(world, out: Path, *args: str) -> list[str]:
    """`sh run.sh --stage 3` with the test recipe config, experiment and output folder."""
    common = ["--config", str(world["recipe"]), "--infer_expt_dir", str(world["exp"])]
    return ["sh", str(REPO_ROOT / "egs" / "tts" / "VALLE" / "run.sh"), "--stage", "3", *common,
            "--infer_output_dir", str(out), *args]  # fmt: skip


RUN_ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_sh(world, out: Path, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    argv = run_sh_argv(world, out, *args)
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=RUN_ENV)


def check_result(record: dict, out_dir: Path) -> None:
    """A result line agrees with its wav file and with the configured caps."""
    wav = Path(record["output"])
    assert wav.parent == out_dir and wav.is_file()
    info = sf.info(wav)
    assert info.samplerate == SR and info.channels == 1
    assert info.frames == record["frames"] * 320
    assert record["seconds"] == pytest.approx(record["frames"] * 320 / SR, abs=1e-3)
    cap = min(int(1.0 * record["text_ids"]) + 1, int(0.6 * 75))  # recipe.json caps
    assert 1 <= record["frames"] <= cap
    assert record["stop_reason"] in ("eos", "cap")
    assert (record["stop_reason"] == "cap") == (record["frames"] == cap)
    assert record["wall_time"] > 0 and record["rtf"] > 0


def main(world, out: Path, *extra: str) -> int:
    return cli.main(
        [
            "--config",
            str(world["recipe"]),
            "--expt_dir",
            str(world["exp"]),
            "--output_dir",
            str(out),
            "--progress",
            "false",
            *extra,
        ]
    )


def single(world, out: Path, *extra: str, text: str = TEXTS[2], audio: Path | None = None) -> int:
    audio = audio or world["prompts"] / "a.wav"
    args = ["--mode", "single", "--text", text, "--text_prompt", "prompt " + TEXTS[3]]
    return main(world, out, *args, "--audio_prompt", str(audio), *extra)
