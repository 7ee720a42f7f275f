"""Parler-TTS decoding: delay pattern, per-item EOS gating, KV cache, true batching.

The loop follows the package's `generate` (greedy or sampled) step for step:
1. encode the description once; with the cache, also its cross-attention keys/values per layer;
2. start from one BOS column; the pattern M (delay.py) forces BOS / PAD columns; the model's
   input is the running raw tokens with M applied, its output is kept raw;
3. the package's logits processor per item: a pointer p starts at codebook 0 and moves on by one
   (at most once per step) when codebook p holds an EOS; EOS is forbidden for codebooks > p, so
   codebook k can end only after codebook k-1 did;
4. rows that finished (newest token EOS) receive PAD; an item stops when all its K rows have
   finished ("eos") or at max_new_tokens + 1 columns, the BOS column included ("cap").

Batching gives every item its single-item result: positions count each item's own prompt (see
parler.py), a finished item leaves the batch (and the KV cache), and sampling draws an item's
rows only from that item's generator, so neither the batch size nor the other items change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.tts.parler.delay import apply_delay_pattern, codec_frames, delay_pattern, undelay
from models.tts.parler.parler import ParlerTTS
from modules.sampling import sample
from modules.transformer import KVCache


@dataclass
class Generated:
    """One item's decoding (K codebooks, L columns including the BOS column)."""

    raw: torch.Tensor  # (K, L) the model's choices, PAD after a row finished
    delayed: torch.Tensor  # (K, L) raw with the delay pattern applied
    undelayed: torch.Tensor  # (K, L - K) frames
    codes: torch.Tensor  # (F, K) frames for the codec: those without any id >= codebook_size
    stop: str  # "eos" | "cap"
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (K, V) raw, if recorded


@dataclass
class _Batch:
    """Decoding state. Per-item tensors have B rows; `active` lists the items still running
    (the cache and cross_kv hold only theirs, in that order)."""

    P: int  # prompt slots (padded length)
    M: torch.Tensor  # (K, max_length) delay pattern
    enc: torch.Tensor  # (B, S, D) description memory
    enc_ok: torch.Tensor  # (B, S) valid description tokens
    prompt: torch.Tensor  # (B, P, D) transcript embeddings
    positions: torch.Tensor  # (B, P + max_length)
    valid: torch.Tensor  # (B, P + max_length) keys that may be seen
    raw: torch.Tensor  # (B, K, max_length) raw tokens
    finished: torch.Tensor  # (B, K) rows that emitted EOS
    pointer: torch.Tensor  # (B,) the EOS-gating codebook of each item
    active: torch.Tensor  # (Ba,) original item indices
    cache: KVCache | None = None
    cross_kv: list | None = None  # per layer (k, v) of the active items

    def keep(self, rows: torch.Tensor) -> None:
        self.active = self.active[rows]
        if self.cache is not None:
            self.cache.select(rows)
            self.cross_kv = [(k[rows], v[rows]) for k, v in self.cross_kv]


@torch.no_grad()
def generate(
    model: ParlerTTS,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    top_k: int = 50,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generators: list[torch.Generator] | None = None,
    use_cache: bool = True,
    package_positions: bool = False,
    record_logits: bool = False,
) -> list[Generated]:
    """Description (B, S) + transcript (B, P) ids and masks (any padding side) -> B results.

    do_sample=False: greedy. do_sample=True: temperature, then top_k (<= 0: off), then top_p
    (the package's defaults: top_k 50, top_p 1, temperature 1); with `generators` (one per item,
    e.g. seeded from a run seed and the utterance name) item b draws only from generators[b].
    use_cache=False recomputes the whole sequence every step (same tokens; for checks and
    bench). package_positions reproduces the package's padded-batch positions (checks only).
    """
    B, cfg = input_ids.shape[0], model.cfg
    assert generators is None or len(generators) == B, f"{len(generators)} generators, {B} items"
    max_length = max_new_tokens + 1  # the BOS column counts
    state = _start(model, input_ids, attention_mask, prompt_input_ids, prompt_attention_mask,
                   max_length, use_cache, package_positions)  # fmt: skip
    results: dict[int, Generated] = {}
    logits_log: list[list[torch.Tensor]] = [[] for _ in range(B)]
    cur = 1  # columns so far
    while len(state.active):
        a = state.active
        logits = _step_logits(model, state, cur)  # (Ba, K, V)
        if record_logits:
            for i, b in enumerate(a.tolist()):
                logits_log[b].append(logits[i].cpu())
        tokens = _choose(model, state, logits, do_sample, top_k, top_p, temperature, generators)
        tokens = torch.where(state.finished[a], cfg.pad_token_id, tokens)
        state.raw[a, :, cur] = tokens
        state.finished[a] |= tokens == cfg.eos_token_id
        cur += 1
        done = state.finished[a].all(dim=1) | (cur == max_length)
        done_list = done.tolist()  # one host sync per step
        for i, b in enumerate(a.tolist()):
            if done_list[i]:
                stop = "eos" if bool(state.finished[b].all()) else "cap"
                results[b] = _result(state.raw[b, :, :cur], state.M, stop, cfg, logits_log[b])
        if any(done_list):
            state.keep((~done).nonzero().flatten())
    return [results[b] for b in range(B)]


def _start(model, input_ids, attention_mask, prompt_ids, prompt_mask, max_length, use_cache,
           package_positions) -> _Batch:  # fmt: skip
    """Encode the description and the transcript once; one BOS column for every row."""
    cfg, device = model.cfg, input_ids.device
    (B, P), K = prompt_ids.shape, cfg.num_codebooks
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    bos = torch.full((K, 1), cfg.bos_token_id, device=device)
    enc = model.encode_description(input_ids, attention_mask)  # (B, S, D)
    raw = torch.full((B, K, max_length), cfg.pad_token_id, dtype=torch.long, device=device)
    raw[:, :, 0] = cfg.bos_token_id
    state = _Batch(
        P=P,
        M=delay_pattern(bos, cfg.bos_token_id, cfg.pad_token_id, max_length),
        enc=enc,
        enc_ok=attention_mask.bool(),
        prompt=model.embed_prompts(prompt_ids),
        positions=model.positions(prompt_mask, max_length, package_positions),
        valid=F.pad(prompt_mask.bool(), (0, max_length), value=True),
        raw=raw,
        finished=raw.new_zeros(B, K, dtype=torch.bool),
        pointer=raw.new_zeros(B),
        active=torch.arange(B, device=device),
    )
    model.check_positions(state.positions)  # before any work, not in the middle of decoding
    if use_cache:
        state.cache = KVCache(len(model.stack.layers), P + max_length)
        state.cross_kv = model.cross_keys_values(enc)
    return state


def _step_logits(model: ParlerTTS, state: _Batch, cur: int) -> torch.Tensor:
    """Raw logits (Ba, K, V) of the next column for the active items."""
    a, P = state.active, state.P
    inputs = apply_delay_pattern(state.raw[a, :, :cur], state.M)  # forced columns forced
    if state.cache is not None and cur > 1:  # one new column through the cache
        x = model.embed(None, inputs[:, :, -1:], state.positions[a, P + cur - 1 : P + cur])
        visible = state.valid[a, None, : P + cur]
        hidden = model.run_decoder(x, visible, state.cross_kv, state.enc_ok[a], state.cache)
    else:  # the first step, or no cache: [prompt ; all columns so far]
        x = model.embed(state.prompt[a], inputs, state.positions[a, : P + cur])
        causal = torch.ones(P + cur, P + cur, dtype=torch.bool, device=x.device).tril()
        visible = causal[None] & state.valid[a, None, : P + cur]
        kv = state.cross_kv if state.cache is not None else model.cross_keys_values(state.enc[a])
        hidden = model.run_decoder(x, visible, kv, state.enc_ok[a], state.cache)
    return model.heads(hidden[:, -1:])[:, :, 0].float()


def _choose(model, state: _Batch, logits, do_sample, top_k, top_p, temperature, generators):
    """The package's EOS gating, then argmax or a draw -> tokens (Ba, K)."""
    eos, K = model.cfg.eos_token_id, logits.shape[1]
    a = state.active
    pointer = state.pointer[a]
    # Codebook p holds an EOS (= it finished: rows finish at their first EOS) -> move on.
    advance = state.finished[a].gather(1, pointer[:, None])[:, 0] & (pointer < K - 1)
    pointer = pointer + advance.long()
    state.pointer[a] = pointer
    forbid = torch.arange(K, device=logits.device)[None] > pointer[:, None]  # (Ba, K)
    scores = logits.clone()  # the raw logits stay raw (recorded for checks)
    scores[..., eos] = scores[..., eos].masked_fill(forbid, float("-inf"))
    if not do_sample:
        return scores.argmax(dim=-1)
    rows = None if generators is None else [generators[b] for b in a.tolist() for _ in range(K)]
    flat = sample(scores.flatten(0, 1), top_k, top_p, temperature, rows)
    return flat.view(-1, K)


def _result(raw: torch.Tensor, M: torch.Tensor, stop: str, cfg, logits) -> Generated:
    delayed = apply_delay_pattern(raw, M)
    frames = undelay(delayed)
    # The package drops every frame holding an id >= 1024 (= PAD = the codebook size).
    codes = codec_frames(frames, cfg.pad_token_id)
    return Generated(raw.clone(), delayed, frames, codes, stop, logits)
