"""The MusicGen / Parler-TTS codebook delay pattern: codebook k runs k steps behind codebook 0.

With K codebooks, step t of the decoder predicts frame t of codebook 0, frame t-1 of codebook 1,
..., frame t-K+1 of codebook K-1, so codebook k is conditioned on the lower codebooks of the same
frame. The pattern `M` says which columns are forced: BOS before a codebook starts (the
triangle at the start), PAD after it must have ended (the triangle at the end of the length
cap), -1 where the model chooses. Same semantics as the parler-tts package's
`build_delay_pattern_mask` / `apply_delay_pattern_mask` (K = 4, Lm = 8, prefix = BOS only):

    k=0: B . . . . P P P
    k=1: B B . . . . P P
    k=2: B B B . . . . P
    k=3: B B B B . . . .
"""

from __future__ import annotations

import torch

IGNORE = -100  # label value that never enters the loss (batch padding; BOS labels)


def delay_pattern(prefix: torch.Tensor, bos: int, pad: int, max_length: int) -> torch.Tensor:
    """prefix (K, S) un-delayed ids -> pattern M (K, max_length): BOS, pad, prefix or -1 (free).

    Codebook k: BOS in columns j <= k, `pad` in columns j >= max_length - K + 1 + k, the prefix
    value prefix[k, j - k] where 0 <= j - k < S and neither applies. The package builds nothing
    (all free) when max_length < 2K - 1; so do we.
    """
    K, S = prefix.shape
    M = prefix.new_full((K, max_length), -1)
    if max_length < 2 * K - 1:
        return M
    j = torch.arange(max_length, device=prefix.device)
    for k in range(K):
        n = min(S, max_length - k)
        if n > 0:
            M[k, k : k + n] = prefix[k, :n]
        M[k, j <= k] = bos
        M[k, j >= max_length - K + 1 + k] = pad
    return M


def apply_delay_pattern(ids: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """ids (..., K, L) with pattern (K, >= L): forced columns take the pattern's value."""
    M = pattern[..., : ids.shape[-1]]
    return torch.where(M == -1, ids, M)


def undelay(delayed: torch.Tensor) -> torch.Tensor:
    """delayed (..., K, L) -> (..., K, max(L - K, 0)) frames: codebook k keeps columns
    k+1 .. L-K+k (none when the run was shorter than the delay)."""
    K, L = delayed.shape[-2:]
    n = max(L - K, 0)
    return torch.stack([delayed[..., k, k + 1 : k + 1 + n] for k in range(K)], dim=-2)


def codec_frames(undelayed: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """undelayed (K, F) -> (F', K) time-major frames for the codec: every frame in which any
    codebook holds a special id (>= codebook_size: EOS/PAD 1024, BOS 1025, and the never-trained
    ids 1026..1087 that exist only because the vocabulary is rounded to 1088) is dropped.

    This is the package's rule whenever a special id occurs in the batch (the usual case: EOS
    ends generation); the package decodes ids 1026+ unfiltered otherwise and indexes out of range
    in the DAC, we drop those frames too.
    """
    keep = (undelayed < codebook_size).all(dim=0)  # (F,)
    return undelayed[:, keep].t().contiguous()


def delayed_labels(codes: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
    """Training labels of one item: codes (K, T) in [0, codebook_size) -> (T + K, K) time-major.

    Codebook k = k x BOS, its T codes, K - k x EOS (the package's training data pipeline:
    prepend a BOS column, build the pattern with pad = EOS and length T + 1 + K, fill the one free
    column per codebook with EOS, drop the first column).
    """
    K, T = codes.shape
    prefix = torch.cat([codes.new_full((K, 1), bos), codes], dim=1)  # (K, T + 1)
    M = delay_pattern(prefix, bos, eos, T + 1 + K)
    M = torch.where(M == -1, torch.full_like(M, eos), M)
    return M[:, 1:].t().contiguous()


def collate_labels(items: list[torch.Tensor]) -> torch.Tensor:
    """[(T_b + K, K)] -> (B, T_max, K), padded along time with IGNORE (the package's collator)."""
    T = max(x.shape[0] for x in items)
    out = items[0].new_full((len(items), T, items[0].shape[1]), IGNORE)
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x
    return out


def decoder_inputs(labels: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
    """labels (B, T, K) -> decoder input ids (B, K, T): shifted right one step, BOS first,
    IGNORE -> pad (the package derives the inputs from the labels inside forward)."""
    shifted = torch.cat([labels.new_full(labels[:, :1].shape, bos), labels[:, :-1]], dim=1)
    shifted = shifted.masked_fill(shifted == IGNORE, pad)
    return shifted.transpose(1, 2).contiguous()
