"""Encoder-decoder blocks: cross-attention and a causal decoder layer that attends to a memory.

``CrossAttentionDecoder`` is a pre-norm stack of (causal self-attention, cross-attention to the
encoder output, ReLU feed-forward) layers. Decoding is incremental on both sides:

* the self-attention keys/values live in ``modules.transformer.KVCache`` (one new position per
  step);
* the cross-attention keys/values depend only on the encoder output, so ``memory_kv`` projects
  them once per utterance into a ``CrossKV`` and every step reuses them.

Masks are boolean (True = may attend) and attention runs through
``F.scaled_dot_product_attention`` like ``modules.transformer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.transformer import HeadedAttention, KVCache, LayerNorm, MultiheadSelfAttention


@dataclass
class CrossKV:
    """Encoder keys/values of every decoder layer, (B, H, S, hd) each, and key_ok (B, S)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_ok: torch.Tensor  # True on real (non-padding) encoder positions

    def select(self, rows: torch.Tensor) -> CrossKV:
        """Only the given batch rows (finished items leave the batch)."""
        return CrossKV(
            [k.index_select(0, rows) for k in self.keys],
            [v.index_select(0, rows) for v in self.values],
            self.key_ok.index_select(0, rows),
        )


class MultiheadCrossAttention(HeadedAttention):
    """Queries from the decoder, keys/values from a memory (projected once, see ``project``)."""

    def __init__(self, dim: int, nhead: int, dropout: float = 0.0):
        super().__init__(dim, nhead, dropout)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def project(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, D) -> keys, values (B, H, S, hd)."""
        B, S, _ = memory.shape
        kv = self.kv_proj(memory).view(B, S, 2, self.nhead, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_ok: torch.Tensor
    ) -> torch.Tensor:
        """x (B, L, D), k/v (B, H, S, hd), key_ok (B, S) -> (B, L, D)."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.nhead, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        return self.attend(q, k, v, key_ok[:, None, None, :])


class CrossAttentionDecoderLayer(nn.Module):
    """Pre-norm: x += SelfAttn(LN x); x += CrossAttn(LN x, memory); x += FF(LN x)."""

    def __init__(self, dim: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = MultiheadSelfAttention(dim, nhead, dropout)
        self.cross_attn = MultiheadCrossAttention(dim, nhead, dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        cross: CrossKV,
        layer_index: int,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D). attn_mask: self-attention mask (None: see every key)."""
        h = self.self_attn(self.norm1(x), attn_mask, cache, layer_index)
        x = x + self.dropout(h)
        k, v = cross.keys[layer_index], cross.values[layer_index]
        x = x + self.dropout(self.cross_attn(self.norm2(x), k, v, cross.key_ok))
        h = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(x)))))
        return x + self.dropout(h)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) bool: query i may attend keys <= i."""
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    return torch.tril(ones)[None, None]


class CrossAttentionDecoder(nn.Module):
    """``layers`` of CrossAttentionDecoderLayer (feed-forward 4x width) + a final LayerNorm."""

    def __init__(self, dim: int, nhead: int, num_layers: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionDecoderLayer(dim, nhead, 4 * dim, dropout) for _ in range(num_layers)
        )
        self.norm = LayerNorm(dim)

    def new_cache(self, capacity: int) -> KVCache:
        """An empty self-attention KV cache with room for ``capacity`` positions to start."""
        return KVCache(len(self.layers), capacity)

    def memory_kv(self, memory: torch.Tensor, key_ok: torch.Tensor) -> CrossKV:
        """Project the encoder output (B, S, D) once for every layer; key_ok (B, S)."""
        kv = [layer.cross_attn.project(memory) for layer in self.layers]
        return CrossKV([k for k, _ in kv], [v for _, v in kv], key_ok)

    def forward(
        self, x: torch.Tensor, cross: CrossKV, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D), causal. With a cache, x holds only the new positions (they
        see every cached position and, among themselves, the earlier ones)."""
        L = x.shape[1]
        if cache is None or cache.length == 0:
            mask = causal_mask(L, x.device) if L > 1 else None
        else:
            assert L == 1, "a cached decoder step takes one new position"
            mask = None  # one new query may attend every cached key
        for i, layer in enumerate(self.layers):
            x = layer(x, cross, i, mask, cache)
        if cache is not None:
            cache.advance(L)
        return self.norm(x)
