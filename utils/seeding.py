"""Per-utterance sampling seeds: an utterance's random draws depend only on the run's seed and
its own name, never on the batch it lands in, the list order or a partial re-run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def utterance_seed(seed: int, name: str) -> int:
    """A hash of the run's seed and the utterance's name (63 bits: a valid manual_seed)."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def utterance_generators(
    seed: int, names: Sequence[str], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per utterance (for ``modules.sampling.sample``'s per-row draws)."""
    return [torch.Generator(device=device).manual_seed(utterance_seed(seed, n)) for n in names]
