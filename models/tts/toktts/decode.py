"""TokTTS decoding: batched, KV-cached, with per-utterance sampling generators.

Every active item emits one token per step, so the decoder side of a batch is never padded:
all rows sit at the same output index. The text side is padded and hidden by the cross-attention
key mask. Per step:

1. logits of the next token: with the cache, one new position through the decoder (the
   self-attention keys/values are cached, the cross-attention keys/values were projected once by
   ``TokTTS.encode``); without it, the whole ``[BOS, generated...]`` recomputed (reference);
2. illegal ids are -inf (``model.legal_mask``: the position's codebook; EOS on frame boundaries);
3. a token per row by ``modules.sampling.sample``: greedy for top_k == 1, otherwise top-k /
   top-p / temperature, row b drawing only from its own generator, so an item's output does not
   depend on the batch it is in;
4. rows that emitted EOS leave the batch (``DecodeState.keep``: the cache, the cross keys/values
   and the generators are cut to the remaining rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from models.tts.toktts.model import TokTTS, tokens_to_codes
from modules.cross_attention import CrossKV
from modules.sampling import sample
from modules.transformer import KVCache


@dataclass
class DecodeResult:
    codes: list[torch.Tensor]  # per item, (F_i, C) int64 codes
    stop_reasons: list[str]  # per item: "eos" or "cap" (reached max_frames)
    steps: int  # decoder passes run


@dataclass
class DecodeState:
    """What the active rows carry from step to step (row r = original item ``items[r]``)."""

    items: list[int]
    cross: CrossKV
    cache: KVCache | None  # None: the reference path recomputes every step
    generators: list[torch.Generator] | None
    tokens: torch.Tensor  # (B_active, steps) tokens emitted so far (BOS excluded)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only rows (1-D int64 indices into the active rows)."""
        kept = rows.tolist()
        self.items = [self.items[r] for r in kept]
        self.cross = self.cross.select(rows)
        if self.cache is not None:
            self.cache.select(rows)
        if self.generators is not None:
            self.generators = [self.generators[r] for r in kept]
        self.tokens = self.tokens.index_select(0, rows)


def _next_logits(model: TokTTS, state: DecodeState, step: int) -> torch.Tensor:
    """(B_active, V) logits of output index ``step``."""
    inputs = nn.functional.pad(state.tokens, (1, 0), value=model.cfg.bos_id)  # (B, step + 1)
    if state.cache is not None:  # only the newest input: the cache holds the rest
        return model.decode(inputs[:, -1:], state.cross, state.cache, start=step)[:, -1]
    return model.decode(inputs, state.cross)[:, -1]


@torch.no_grad()
def generate(
    model: TokTTS,
    text_rows: list[torch.Tensor],
    *,
    top_k: int = 1,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generators: list[torch.Generator] | None = None,
    max_frames: int | None = None,
    use_kv_cache: bool = True,
) -> DecodeResult:
    """Decode a batch of char id rows (S_b,) into codes (F_b, C) each.

    top_k 1 = greedy (default; no generator used). generators: one per item (seeded per
    utterance, ``utils.seeding.utterance_generators``) for batch-independent sampling.
    max_frames: cap (default and maximum: the model's ``max_frames``).
    """
    cfg = model.cfg
    B = len(text_rows)
    assert B > 0 and all(len(t) > 0 for t in text_rows), "every item needs a non-empty text"
    assert generators is None or len(generators) == B, f"{len(generators)} generators, {B} items"
    max_frames = cfg.max_frames if max_frames is None else max_frames
    assert 1 <= max_frames <= cfg.max_frames, f"max_frames must be in [1, {cfg.max_frames}]"
    max_tokens = max_frames * cfg.num_codebooks
    device = text_rows[0].device
    text = nn.utils.rnn.pad_sequence([t.long() for t in text_rows], batch_first=True)
    text_lens = torch.tensor([len(t) for t in text_rows], device=device)
    state = DecodeState(
        items=list(range(B)),
        cross=model.encode(text, text_lens),
        cache=model.decoder.new_cache(max_tokens) if use_kv_cache else None,
        generators=list(generators) if generators is not None else None,
        tokens=torch.empty(B, 0, dtype=torch.long, device=device),
    )
    out: list[torch.Tensor | None] = [None] * B
    reasons = ["cap"] * B
    for step in range(max_tokens):
        logits = _next_logits(model, state, step)
        token = sample(logits, top_k, top_p, temperature, state.generators)  # (B_active,)
        done = token == cfg.eos_id
        state.tokens = torch.cat([state.tokens, token[:, None]], dim=1)
        if bool(done.any()):  # one host sync per step
            for r in done.nonzero().flatten().tolist():
                out[state.items[r]] = state.tokens[r, :-1]  # EOS dropped
                reasons[state.items[r]] = "eos"
            if bool(done.all()):
                break
            state.keep((~done).nonzero().flatten())
    for r, item in enumerate(state.items):
        if out[item] is None:
            out[item] = state.tokens[r]
    codes = [tokens_to_codes(t, cfg.num_codebooks, cfg.codebook_size) for t in out]
    return DecodeResult(codes=codes, stop_reasons=reasons, steps=step + 1)
