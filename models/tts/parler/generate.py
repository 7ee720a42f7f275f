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
    """Decoding state of the items still running (rows index the `active` items)."""

    active: torch.Tensor  # (Ba,) original item indices
    raw: torch.Tensor  # (B, K, max_length) all items
    finished: torch.Tensor  # (B, K)
    pointer: torch.Tensor  # (B,) the EOS-gating codebook of each item
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
    cfg = model.cfg
    B, P = prompt_input_ids.shape
    K, device = cfg.num_codebooks, input_ids.device
    assert generators is None or len(generators) == B, f"{len(generators)} generators, {B} items"
    if prompt_attention_mask is None:
        prompt_attention_mask = torch.ones_like(prompt_input_ids)
    max_length = max_new_tokens + 1  # the BOS column counts
    M = delay_pattern(
        torch.full((K, 1), cfg.bos_token_id, device=device), cfg.bos_token_id,
        cfg.pad_token_id, max_length,
    )  # fmt: skip
    enc = model.encode_description(input_ids, attention_mask)  # (B, S, D)
    enc_ok = attention_mask.bool()
    prompt = model.embed_prompts(prompt_input_ids)  # (B, P, D)
    positions = model.positions(prompt_attention_mask, max_length, package_positions)
    valid = torch.cat([prompt_attention_mask.bool(), enc_ok.new_ones(B, max_length)], dim=1)
    raw = torch.full((B, K, max_length), cfg.pad_token_id, dtype=torch.long, device=device)
    raw[:, :, 0] = cfg.bos_token_id
    state = _Batch(torch.arange(B, device=device), raw, raw.new_zeros(B, K, dtype=torch.bool),
                   raw.new_zeros(B))  # fmt: skip
    if use_cache:
        state.cache = KVCache(len(model.stack.layers), P + max_length)
        state.cross_kv = model.cross_keys_values(enc)
    results: dict[int, Generated] = {}
    logits_log: list[list[torch.Tensor]] = [[] for _ in range(B)]
    cur = 1
    while len(state.active):
        a = state.active
        inputs = apply_delay_pattern(raw[a, :, :cur], M)  # (Ba, K, cur): forced columns forced
        if state.cache is not None and cur > 1:  # one new column through the cache
            x = model.embed(None, inputs[:, :, -1:], positions[a, P + cur - 1 : P + cur])
            hidden = model.run_decoder(
                x, valid[a, None, : P + cur], state.cross_kv, enc_ok[a], state.cache
            )
        else:  # the first step, or no cache: [prompt ; all columns so far]
            x = model.embed(prompt[a], inputs, positions[a, : P + cur])
            causal = torch.ones(P + cur, P + cur, dtype=torch.bool, device=device).tril()
            kv = state.cross_kv if state.cross_kv is not None else model.cross_keys_values(enc[a])
            hidden = model.run_decoder(
                x, causal[None] & valid[a, None, : P + cur], kv, enc_ok[a], state.cache
            )
        logits = model.heads(hidden[:, -1:])[:, :, 0].float()  # (Ba, K, V)
        if record_logits:
            for i, b in enumerate(a.tolist()):
                logits_log[b].append(logits[i].cpu())
        tokens = _choose(model, state, logits, do_sample, top_k, top_p, temperature, generators)
        tokens = torch.where(state.finished[a], cfg.pad_token_id, tokens)
        raw[a, :, cur] = tokens
        state.finished[a] |= tokens == cfg.eos_token_id
        cur += 1
        done = state.finished[a].all(dim=1)
        if cur == max_length:
            done = torch.ones_like(done)
        done_list = done.tolist()  # one host sync per step
        for i, b in enumerate(a.tolist()):
            if done_list[i]:
                stop = "eos" if bool(state.finished[b].all()) else "cap"
                results[b] = _result(raw[b, :, :cur], M, stop, cfg.pad_token_id, logits_log[b])
        if any(done_list):
            state.keep((~done).nonzero().flatten())
    return [results[b] for b in range(B)]


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


def _result(raw: torch.Tensor, M: torch.Tensor, stop: str, pad: int, logits) -> Generated:
    delayed = apply_delay_pattern(raw, M)
    frames = undelay(delayed)
    # The package drops every frame holding an id >= 1024 (= PAD = the codebook size).
    return Generated(raw.clone(), delayed, frames, codec_frames(frames, pad), stop, logits)
