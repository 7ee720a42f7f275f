"""Top-k / top-p / temperature filtering and sampling (Amphion's ``topk_sampling`` semantics).

``filter_logits`` keeps, per row, the ``top_k`` best tokens (ties with the k-th kept) and then
the smallest set of best tokens whose probability mass exceeds ``top_p`` (the token that crosses
the threshold is kept; Hugging Face / Amphion semantics); everything else becomes ``-inf``.
``sample`` draws from the filtered softmax with an optional ``torch.Generator`` so a seed makes
decoding reproducible; a list of generators (one per row) makes each row's draw depend only on
its own generator and logits, not on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) -> filtered copy. top_k <= 0 or top_p >= 1 disables that filter."""
    assert logits.ndim == 2, f"expected (batch, vocab) logits, got {tuple(logits.shape)}"
    assert 0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}"
    logits = logits.clone()
    if top_k > 0:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits[logits < kth_best] = float("-inf")
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.cumsum(F.softmax(sorted_logits.float(), dim=-1), dim=-1)
        # Drop a token when the mass *before* it already exceeds top_p: the best token is always
        # kept, and so is the one that crosses the threshold.
        remove_sorted = cumulative > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
        logits[remove] = float("-inf")
    return logits


def sample(
    logits: torch.Tensor,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """logits (B, V) -> sampled ids (B,) int64. ``top_k == 1`` is greedy (argmax, no RNG use).

    ``generator``: one generator for the whole batch (rows draw from one stream, so a row's
    draw depends on the rows before it), or a sequence of B generators: row b draws only from
    ``generator[b]``.
    """
    assert temperature > 0.0, f"temperature must be > 0, got {temperature}"
    if top_k == 1:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    probs = F.softmax(filter_logits(logits, top_k, top_p).float(), dim=-1)
    if isinstance(generator, Sequence):
        assert len(generator) == len(probs), f"{len(generator)} generators for {len(probs)} rows"
        rows = [
            torch.multinomial(p[None], 1, generator=g)
            for p, g in zip(probs, generator, strict=True)
        ]
        return torch.cat(rows).squeeze(-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
