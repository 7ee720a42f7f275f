"""Transformer decoder blocks for VALL-E, numerically equal to Amphion's and fast.

Parameter names follow Amphion (``self_attn.in_proj_weight/in_proj_bias/out_proj``,
``linear1/linear2``, ``norm1/norm2``, ``norm.project_layer`` / ``norm.norm`` for the adaptive
norm) so released checkpoints load with strict keys. Attention runs through
``F.scaled_dot_product_attention`` so CUDA picks flash / memory-efficient kernels and bf16/fp16
work; masks are boolean (True = may attend), never float32 tensors.

``KVCache`` holds preallocated keys/values of every layer so autoregressive decoding costs one
new position per step instead of the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class KVCache:
    """Keys/values of every layer: (B, H, capacity, head_dim) each, grown by doubling.

    All rows share one write position ``length`` (batched decoding pads the prefill, then every
    row appends one frame per step); which cached positions a row may see is up to the mask.
    Buffers are allocated on the first write with the keys' dtype, so decoding under autocast
    caches bf16/fp16 keys.
    """

    def __init__(self, num_layers: int, capacity: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.initial_capacity = capacity
        self.length = 0

    @staticmethod
    def _resized(t: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
        out = t.new_empty(t.shape[0], t.shape[1], capacity, t.shape[3])
        out[:, :, :length] = t[:, :, :length]
        return out

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, L, hd) at [length, length + L); return all keys/values so far."""
        end = self.length + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if keys is None:
            capacity = max(end, self.initial_capacity)
            keys = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            values = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        elif end > keys.shape[2]:
            capacity = max(end, 2 * keys.shape[2])
            keys = self._resized(keys, capacity, self.length)
            values = self._resized(values, capacity, self.length)
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        self.keys[layer], self.values[layer] = keys, values
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished items leave the batch)."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]


class HeadedAttention(nn.Module):
    """What self- and cross-attention share: the head split, and SDPA + head merge + out_proj.

    Subclasses create their own projections (``out_proj`` included) in their own order, so each
    keeps its parameter initialisation (and random-number use) unchanged."""

    out_proj: nn.Linear

    def __init__(self, dim: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        assert dim % nhead == 0, f"width {dim} is not divisible by {nhead} heads"
        self.nhead = nhead
        self.head_dim = dim // nhead
        self.dropout = dropout

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """q (B, H, L, hd), k/v (B, H, S, hd), attn_mask bool (True = may attend) -> (B, L, D)."""
        B, H, L, hd = q.shape
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, H * hd))


class MultiheadSelfAttention(HeadedAttention):
    """torch.nn.MultiheadAttention's parameters (packed q/k/v projection), SDPA compute."""

    def __init__(self, dim: int, nhead: int, dropout: float = 0.0):
        super().__init__(dim, nhead, dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # Same initialisation as torch.nn.MultiheadAttention.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor:
        """x (B, L, D); attn_mask bool, broadcastable to (B, H, L, L_keys), True = may attend."""
        B, L, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.write(layer_index, k, v)  # (B, H, L_keys, hd)
        return self.attend(q, k, v, attn_mask)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that ignores the stage embedding (same call signature as the adaptive one)."""

    def forward(self, x: torch.Tensor, stage_embedding: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class AdaptiveLayerNorm(nn.Module):
    """``g * LayerNorm(x) + b`` with ``[g, b] = project_layer(stage_embedding)`` (VALL-E NAR)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, stage_embedding: torch.Tensor | None = None) -> torch.Tensor:
        assert stage_embedding is not None, "AdaptiveLayerNorm needs the NAR stage embedding"
        weight, bias = torch.split(self.project_layer(stage_embedding), self.dim, dim=-1)
        return weight * self.norm(x) + bias


class TransformerLayer(nn.Module):
    """Self-attention + ReLU feed-forward (4x width in VALL-E), pre- or post-norm."""

    def __init__(
        self,
        dim: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        adaptive_norm: bool = False,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiheadSelfAttention(dim, nhead, dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        norm_cls = AdaptiveLayerNorm if adaptive_norm else LayerNorm
        self.norm1 = norm_cls(dim)
        self.norm2 = norm_cls(dim)

    def forward(
        self,
        x: torch.Tensor,
        stage_embedding: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor:
        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.dropout1(self.self_attn(h, attn_mask, cache, layer_index))

        def feed_forward(h: torch.Tensor) -> torch.Tensor:
            return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(h)))))

        if self.norm_first:
            x = x + attend(self.norm1(x, stage_embedding))
            x = x + feed_forward(self.norm2(x, stage_embedding))
        else:
            x = self.norm1(x + attend(x), stage_embedding)
            x = self.norm2(x + feed_forward(x), stage_embedding)
        return x


class TransformerStack(nn.Module):
    """``layers`` + optional final ``norm`` (Amphion's TransformerEncoder layout)."""

    def __init__(
        self,
        dim: int,
        nhead: int,
        num_layers: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        adaptive_norm: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.nhead = nhead
        self.layers = nn.ModuleList(
            TransformerLayer(dim, nhead, 4 * dim, dropout, norm_first, adaptive_norm)
            for _ in range(num_layers)
        )
        # Amphion has a final norm only with pre-norm layers.
        norm_cls = AdaptiveLayerNorm if adaptive_norm else LayerNorm
        self.norm = norm_cls(dim) if norm_first else None
        self.gradient_checkpointing = False

    def new_cache(self, capacity: int) -> KVCache:
        """An empty KV cache for this stack with room for ``capacity`` positions to start."""
        return KVCache(len(self.layers), capacity)

    def forward(
        self,
        x: torch.Tensor,
        stage_embedding: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D). With a cache, x holds only the new positions."""
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                # Recompute this layer in backward instead of storing its activations.
                x = checkpoint(layer, x, stage_embedding, attn_mask, use_reentrant=False)
            else:
                x = layer(x, stage_embedding, attn_mask, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        if self.norm is not None:
            x = self.norm(x, stage_embedding)
        return x
