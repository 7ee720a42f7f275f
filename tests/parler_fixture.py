"""The parler-tts oracle fixture (../shared/fixtures/parler_tts_tiny, README there): paths and the
model loaded once per test module (float32, one thread, like the fixture's runs)."""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "parler_tts_tiny"


def load_fixture() -> tuple[dict, dict]:
    inputs = torch.load(FIXTURE / "inputs.pt", weights_only=True)
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    return inputs, expected


def load_model():
    from models.tts.parler.pretrained import load_pretrained

    torch.set_num_threads(1)
    return load_pretrained(FIXTURE)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())
