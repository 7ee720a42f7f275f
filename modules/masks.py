"""Padding and attention masks for batches of variable-length rows.

Convention: a padding mask is True on padding; an attention mask is True where a query may
attend (``F.scaled_dot_product_attention``'s boolean convention).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def make_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths (B,) -> (B, max_len) bool, True on padding positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def pad_1d(rows: list[torch.Tensor], value: int = 0) -> torch.Tensor:
    """Right-pad (L, ...) tensors to a batch (B, L_max, ...) (activations inside a model; the
    data pipeline pads with lhotse's collate helpers)."""
    return nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def ar_attention_mask(text_len: int, audio_len: int, key_padding: torch.Tensor) -> torch.Tensor:
    """(B, 1, S+A, S+A) bool, True = may attend. Text queries see the text (no causality);
    audio query t sees the text and audio frames <= t; padded keys are hidden from everyone.
    key_padding (B, S+A) True on padding."""
    n = text_len + audio_len
    i = torch.arange(n, device=key_padding.device)[:, None]
    k = torch.arange(n, device=key_padding.device)[None, :]
    allowed = (k < text_len) | ((i >= text_len) & (k <= i))  # (n, n)
    return allowed[None, None] & ~key_padding[:, None, None, :]
