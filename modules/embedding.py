"""Token and sine positional embeddings with Amphion's parameter layout.

``TokenEmbedding`` keeps the lookup table under ``word_embeddings`` and
``SinePositionalEmbedding`` keeps the learnable scale under ``alpha`` so that Amphion /
lifeiteng VALL-E checkpoints load with strict key checking.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class TokenEmbedding(nn.Module):
    """Plain lookup table: (B, L) int64 ids -> (B, L, dim)."""

    def __init__(self, dim: int, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.dim = dim
        self.dropout = nn.Dropout(dropout)
        self.word_embeddings = nn.Embedding(vocab_size, dim)

    @property
    def weight(self) -> nn.Parameter:
        return self.word_embeddings.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(ids))


class SinePositionalEmbedding(nn.Module):
    """``x * 1.0 + alpha * PE[positions]`` followed by dropout (Amphion, ``scale=False``).

    ``PE[p, 2i] = sin(p * w_i)``, ``PE[p, 2i+1] = cos(p * w_i)``, ``w_i = exp(2i * -ln(1e4) / D)``,
    all computed in float32 exactly like Amphion's table, then cast to the activation dtype.
    ``alpha`` is a 1-element parameter; Amphion's NAR alphas are frozen (``trainable_alpha=False``)
    but still stored in checkpoints and still applied.
    """

    def __init__(self, dim: int, dropout: float = 0.0, trainable_alpha: bool = True):
        super().__init__()
        assert dim % 2 == 0, f"sine positional embedding needs an even width, got {dim}"
        self.dim = dim
        self.trainable_alpha = trainable_alpha  # VALLE.stage_named_parameters reads it
        self.alpha = nn.Parameter(torch.ones(1), requires_grad=trainable_alpha)
        self.dropout = nn.Dropout(dropout)
        # Table grown on demand. A plain attribute, not a buffer: it is not saved (like Amphion's
        # `pe`) and `model.to(bfloat16)` must not round it (it is cast per call instead).
        self._pe = torch.empty(0, dim)

    def table(self, length: int, device: torch.device) -> torch.Tensor:
        """The (length, dim) float32 sine table (cached, grown by doubling)."""
        if self._pe.shape[0] < length or self._pe.device != device:
            n = max(length, 2 * self._pe.shape[0], 256)
            position = torch.arange(0, n, dtype=torch.float32, device=device).unsqueeze(1)
            div_term = torch.exp(
                torch.arange(0, self.dim, 2, dtype=torch.float32, device=device)
                * -(math.log(10000.0) / self.dim)
            )
            pe = torch.zeros(n, self.dim, dtype=torch.float32, device=device)
            pe[:, 0::2] = torch.sin(position * div_term)
            pe[:, 1::2] = torch.cos(position * div_term)
            self._pe = pe
        return self._pe[:length]

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D). positions: None = 0..L-1 for every row, or (B, L) int64 per-row positions
        (KV-cache decoding adds one frame at a time at a different position for each item)."""
        if positions is None:
            pe = self.table(x.shape[1], x.device).unsqueeze(0)  # (1, L, D)
        else:
            pe = self.table(int(positions.max()) + 1, x.device)[positions]  # (B, L, D)
        return self.dropout(x * 1.0 + self.alpha.to(x.dtype) * pe.to(x.dtype))
