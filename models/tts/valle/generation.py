"""VALL-E zero-shot generation: a batched, KV-cached AR loop over stream 0, then the NAR stages.

AR loop, one frame per step for every item still decoding (``DecodeState``): ``prefill``
encodes [text ; prompt] into a KV cache (or, without the cache, ``full_pass`` recomputes the
whole sequence, Amphion's reference loop), ``step`` feeds the last frame, ``decide`` samples and
applies Amphion's stop rule; finished items leave the batch and the cache. Every pass lays a row
out as [text padded to S_max ; audio] with its padding hidden by the mask and positions counted
per item, so an item's numbers do not depend on the batch it is in.

Sampling (``Sampling``): top_k (1 = greedy; <= 0: no top-k filter), top_p, temperature.
generator: None (torch's global RNG), one generator shared by the batch, or a list of B
generators: item b then draws only from generator[b], so its output depends only on its own
inputs and generator (stage 3 gives each utterance its own, models/tts/valle/inference.py).
The NAR stages are greedy (no draws).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from models.tts.valle.losses import MAX_PROMPT_FRAMES
from modules.masks import ar_attention_mask, make_pad_mask, pad_1d
from modules.sampling import sample
from modules.transformer import KVCache

if TYPE_CHECKING:
    from models.tts.valle.valle import VALLE

logger = logging.getLogger(__name__)

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class GenerationResult:
    codes: list[torch.Tensor]  # per item, (G_i, Q) int64, prompt frames excluded
    stop_reasons: list[str]  # per item: "eos", "cap" (or "continual": no AR loop ran)
    ar_steps: int  # AR forward passes run (a KV-cache prefill counts as one)


@dataclass
class Sampling:
    top_k: int
    top_p: float
    temperature: float
    generator: Generators
    min_new_frames: int  # before this many frames, EOS is overruled (masked out, re-decided)


@dataclass
class DecodeState:
    """The AR loop's inputs (indexed by item) and progress (``active`` = batch rows)."""

    text_emb: torch.Tensor  # (B, S, D) embedded text, padded
    text_pad: torch.Tensor  # (B, S) True = padding
    prompts: list[torch.Tensor]  # per item (P_b,) stream-0 prompt (BOS first with prepend_bos)
    caps: list[int]  # per item: most frames to generate
    names: list[str]  # per item, for warnings
    prompt_lens: torch.Tensor = field(init=False)  # (B,)
    active: list[int] = field(init=False)  # item of each batch row still decoding
    generated: list[list[int]] = field(init=False)  # per item, frames so far
    reasons: list[str] = field(init=False)  # per item: "eos" / "cap" once stopped
    warned: set[int] = field(default_factory=set)  # items warned about an early EOS
    new_frames: int = 0  # frames generated so far by every active item (they step together)
    ar_steps: int = 0
    cache: KVCache | None = None
    key_ok: torch.Tensor | None = None  # cached path: (B_active, cache_len) visible keys

    def __post_init__(self) -> None:
        B = len(self.prompts)
        self.prompt_lens = torch.tensor([len(p) for p in self.prompts], device=self.text_pad.device)
        self.active, self.generated, self.reasons = list(range(B)), [[] for _ in range(B)], [""] * B

    def keep(self, rows: list[int]) -> None:
        """Only these batch rows stay; the others (finished) leave the batch and the KV cache."""
        self.active = [self.active[i] for i in rows]
        if self.cache is not None and self.active:
            index = torch.tensor(rows, device=self.key_ok.device)
            self.cache.select(index)
            self.key_ok = self.key_ok[index]

    def generators(self, generator: Generators, rows: list[int]) -> Generators:
        """The generator(s) for these batch rows (per-item generators follow their item)."""
        if isinstance(generator, Sequence):
            return [generator[self.active[i]] for i in rows]
        return generator


def embed_text_rows(
    model: VALLE, rows: list[torch.Tensor], nar: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each text on its own (a conv prenet must not see another row's padding), then
    pad: -> (B, S_max, D) and padding mask (B, S_max)."""
    embedded = [model.embed_text(t[None], nar)[0] for t in rows]
    lens = torch.tensor([len(t) for t in rows], device=rows[0].device)
    return pad_1d(embedded), make_pad_mask(lens)


def full_pass(model: VALLE, s: DecodeState, rows: torch.Tensor) -> torch.Tensor:
    """Reference path (Amphion): recompute [text ; audio] from scratch, return the logits
    (B, V + 1) at each row's last audio frame."""
    audio_rows = [torch.cat([s.prompts[b], s.prompts[b].new_tensor(s.generated[b])])
                  for b in s.active]  # fmt: skip
    audio_lens = torch.tensor([len(a) for a in audio_rows], device=rows.device)
    audio = model.embed_ar_audio(pad_1d(audio_rows))
    S, A = s.text_emb.shape[1], audio.shape[1]
    padding = torch.cat([s.text_pad[rows], make_pad_mask(audio_lens, A)], dim=1)
    h = model.ar_decoder(torch.cat([s.text_emb[rows], audio], dim=1),
                         attn_mask=ar_attention_mask(S, A, padding))  # fmt: skip
    last = h[torch.arange(len(audio_rows)), S + audio_lens - 1]  # (B, D)
    return model.ar_predict_layer(last)


def prefill(model: VALLE, s: DecodeState, rows: torch.Tensor) -> torch.Tensor:
    """Encode text + prompt once into a fresh KV cache; logits (B, V + 1) of the first frame."""
    text_emb, text_pad = s.text_emb[rows], s.text_pad[rows]
    B, S, _ = text_emb.shape
    prompt_lens = s.prompt_lens[rows]
    audio = model.embed_ar_audio(pad_1d([s.prompts[b] for b in s.active]))
    P = audio.shape[1]
    padding = torch.cat([text_pad, make_pad_mask(prompt_lens, P)], dim=1)  # (B, S + P)
    # Room for 10 s of audio up front; the cache doubles when a long item needs more.
    s.cache = model.ar_decoder.new_cache(S + P + min(max(s.caps), 750))
    h = model.ar_decoder(torch.cat([text_emb, audio], dim=1),
                         attn_mask=ar_attention_mask(S, P, padding), cache=s.cache)  # fmt: skip
    s.key_ok = ~padding
    return model.ar_predict_layer(h[torch.arange(B), S + prompt_lens - 1])


def step(model: VALLE, s: DecodeState, rows: torch.Tensor) -> torch.Tensor:
    """Feed each row's last frame at its own audio position; logits (B, V + 1)."""
    last = torch.tensor([s.generated[b][-1] for b in s.active], device=rows.device)
    positions = s.prompt_lens[rows] + s.new_frames - 1  # audio position of `last`
    s.key_ok = F.pad(s.key_ok, (0, 1), value=True)
    h = model.ar_decoder(model.embed_ar_audio(last[:, None], positions[:, None]),
                         attn_mask=s.key_ok[:, None, None, :], cache=s.cache)  # fmt: skip
    return model.ar_predict_layer(h[:, -1])


def decide(
    model: VALLE, logits: torch.Tensor, sampling: Sampling, generator: Generators
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V + 1) -> (sampled ids, stop) with Amphion's rule: stop if the argmax or
    the sample is EOS."""
    tokens = sample(logits, sampling.top_k, sampling.top_p, sampling.temperature, generator)
    stop = (logits.argmax(-1) == model.eos_id) | (tokens == model.eos_id)
    return tokens, stop


def decide_rows(
    model: VALLE, s: DecodeState, logits: torch.Tensor, sampling: Sampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decide`` for every row; a stop before min_new_frames is overruled: Amphion raised
    SyntaxError there, we forbid EOS for this frame and warn. Only those rows decide again (and
    draw again, each from its own generator)."""
    every_row = list(range(len(s.active)))
    tokens, stop = decide(model, logits, sampling, s.generators(sampling.generator, every_row))
    early = stop & (s.new_frames < sampling.min_new_frames)
    if bool(early.any()):
        redo = early.nonzero().flatten().tolist()
        for i in redo:
            if s.active[i] not in s.warned:
                s.warned.add(s.active[i])
                logger.warning(
                    "%s: the AR model chose EOS after %d frame(s); EOS suppressed until "
                    "min_new_frames=%d",
                    s.names[s.active[i]],
                    s.new_frames,
                    sampling.min_new_frames,
                )
        masked = logits[redo].clone()
        masked[:, model.eos_id] = float("-inf")
        tokens[redo], stop[redo] = decide(
            model, masked, sampling, s.generators(sampling.generator, redo)
        )
    return tokens, stop


def ar_generate(model: VALLE, s: DecodeState, sampling: Sampling, use_kv_cache: bool) -> None:
    """Run the AR loop until every item stopped (EOS or its cap); fills s.generated/reasons."""
    while s.active:
        capped = [s.new_frames >= s.caps[b] for b in s.active]  # they stop without another pass
        for b, is_capped in zip(s.active, capped, strict=True):
            if is_capped:
                s.reasons[b] = "cap"
        if any(capped):
            s.keep([i for i, c in enumerate(capped) if not c])
            if not s.active:
                break
        rows = torch.tensor(s.active, device=s.text_emb.device)
        pass_ = full_pass if not use_kv_cache else prefill if s.cache is None else step
        logits = pass_(model, s, rows)
        s.ar_steps += 1
        tokens, stop = decide_rows(model, s, logits, sampling)
        stop_list, token_list = stop.tolist(), tokens.tolist()  # one host sync per step
        for b, stopped, token in zip(s.active, stop_list, token_list, strict=True):
            if stopped:
                s.reasons[b] = "eos"
            else:
                s.generated[b].append(token)
        s.new_frames += 1
        if any(stop_list):
            s.keep([i for i, stopped in enumerate(stop_list) if not stopped])


def nar_generate(
    model: VALLE,
    text_rows: list[torch.Tensor],
    prompt_rows: list[torch.Tensor],
    stream0: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Batched NAR stages 1..Q-1 (greedy). Per item: audio = prompt frames (P_b) then
    generated frames (G_b), positions from 0; returns (G_b, Q) codes per item."""
    B, Q = len(text_rows), model.num_quantizers
    E = model.nar_audio_embeddings
    text_emb, text_pad = embed_text_rows(model, text_rows, nar=True)
    device = text_emb.device
    P = torch.tensor([len(p) for p in prompt_rows], device=device)
    G = torch.tensor([len(s) for s in stream0], device=device)
    A = int((P + G).max())
    frame = torch.arange(A, device=device)[None, :]
    is_prompt = (frame < P[:, None])[..., None]  # (B, A, 1)
    is_new = ((frame >= P[:, None]) & (frame < (P + G)[:, None]))[..., None]
    padding = torch.cat([text_pad, ~(is_prompt | is_new)[..., 0]], dim=1)
    key_ok = ~padding[:, None, None, :]  # (B, 1, 1, S + A)
    # Prompt codes laid out on the audio axis (zeros elsewhere): (B, A, Q).
    prompt_grid = pad_1d([F.pad(p, (0, 0, 0, A - len(p))) for p in prompt_rows])
    stream0_grid = pad_1d(
        [torch.cat([p[:, 0], s]) for p, s in zip(prompt_rows, stream0, strict=True)]
    )
    emb = E[0](stream0_grid)  # (B, A, D)
    if model.prefix_mode != 0:
        # Prompt frames get all their streams up front (like the training prefix).
        for j in range(1, Q):
            emb = torch.where(is_prompt, emb + E[j](prompt_grid[..., j]), emb)

    out = [stream0_grid]
    for nar_stage in range(1, Q):
        predicted = model.nar_logits(text_emb, emb, key_ok, nar_stage).argmax(-1)  # (B, A)
        out.append(predicted)
        if nar_stage < Q - 1:
            emb = torch.where(is_new, emb + E[nar_stage](predicted), emb)
            if model.prefix_mode == 0:
                # Prompt streams are added one NAR stage at a time, like the training input.
                emb = torch.where(is_prompt, emb + E[nar_stage](prompt_grid[..., nar_stage]), emb)
    grid = torch.stack(out, dim=-1)  # (B, A, Q)
    return [grid[b, int(P[b]) : int(P[b] + G[b])] for b in range(B)]


def continual_split(
    prompt_rows: list[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Amphion's ``continual``: the first min(P/2, 225) frames of each prompt are the acoustic
    prompt, stream 0 of the rest is kept. -> (prompts, stream 0 to keep)."""
    splits = [min(int(len(p) * 0.5), MAX_PROMPT_FRAMES) for p in prompt_rows]
    assert all(0 < s < len(p) for s, p in zip(splits, prompt_rows, strict=True)), (
        "continual mode needs prompts of at least 2 frames"
    )
    stream0 = [p[s:, 0] for s, p in zip(splits, prompt_rows, strict=True)]
    return [p[:s] for s, p in zip(splits, prompt_rows, strict=True)], stream0


def nar_text_rows(
    model: VALLE, text_rows: list[torch.Tensor], enroll_text_lens: torch.Tensor | None
) -> list[torch.Tensor]:
    """prefix_mode 2 / 4: the NAR sees BOS + target text + EOS, without the prompt phones
    (Amphion's inference); the other modes see the whole text."""
    if model.prefix_mode not in (2, 4):
        return text_rows
    if enroll_text_lens is None:
        raise ValueError(
            f"prefix_mode {model.prefix_mode} needs enroll_text_lens (the length of "
            "the prompt text, with BOS/EOS) to strip the prompt text for the NAR"
        )
    return [
        torch.cat([t[:1], t[int(n) - 1 :]])
        for t, n in zip(text_rows, enroll_text_lens, strict=True)
    ]


def check_inputs(
    model: VALLE,
    text: torch.Tensor,
    text_lens: torch.Tensor,
    prompt_codes: torch.Tensor,
    prompt_lens: torch.Tensor,
    item_names: list[str],
) -> None:
    B, Q = text.shape[0], model.num_quantizers
    assert text.ndim == 2 and text_lens.shape == (B,), f"text {text.shape}, lens {text_lens.shape}"
    assert prompt_codes.ndim == 3 and prompt_codes.shape[0] == B and prompt_codes.shape[2] == Q, (
        f"prompt_codes must be (B={B}, P, Q={Q}), got {tuple(prompt_codes.shape)}"
    )
    assert prompt_lens.shape == (B,), f"prompt_lens must be (B,), got {prompt_lens.shape}"
    assert bool((text_lens > 0).all()), "every item needs a non-empty text"
    assert bool((prompt_lens > 0).all()), "every item needs a non-empty audio prompt"
    assert len(item_names) == B, f"{len(item_names)} item_names for {B} items"


@torch.no_grad()
def generate(
    model: VALLE,
    text: torch.Tensor,
    text_lens: torch.Tensor,
    prompt_codes: torch.Tensor,
    prompt_lens: torch.Tensor,
    enroll_text_lens: torch.Tensor | None = None,
    *,
    top_k: int = 1,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: Generators = None,
    max_new_frames: torch.Tensor | int | None = None,
    min_new_frames: int = 1,
    continual: bool = False,
    use_kv_cache: bool = True,
    item_names: list[str] | None = None,
) -> GenerationResult:
    """Zero-shot TTS for a batch: AR stream 0 (sampled, KV-cached) then NAR streams 1..Q-1.

    text (B, S) right-padded = prompt text + target text phone ids (joined as Amphion does),
    text_lens (B,); prompt_codes (B, P, Q) right-padded audio prompt codes, prompt_lens (B,);
    enroll_text_lens (B,) = length of the prompt-text part (needed by prefix_mode 2 / 4).
    Sampling arguments: module docstring. A frame stops an item when the argmax OR the sample
    is EOS (Amphion's rule). max_new_frames caps each item (None: Amphion's 16 * text_len + 1).
    continual=True: Amphion's ``continual`` (``continual_split``; no AR loop, the NAR sees the
    whole text in every prefix mode). use_kv_cache=False: the reference loop.
    """
    B = text.shape[0]
    item_names = item_names or [f"item {b}" for b in range(B)]
    check_inputs(model, text, text_lens, prompt_codes, prompt_lens, item_names)
    text_rows = [text[b, : int(text_lens[b])] for b in range(B)]
    prompt_rows = [prompt_codes[b, : int(prompt_lens[b])].long() for b in range(B)]
    if continual:
        prompt_rows, stream0 = continual_split(prompt_rows)
        reasons, ar_steps, nar_text = ["continual"] * B, 0, text_rows
    else:
        if max_new_frames is None:
            caps = 16 * text_lens.long() + 1  # Amphion: stop once len > 16 * text_len
        else:
            caps = torch.as_tensor(max_new_frames, dtype=torch.long).expand(B)
        prompts = [p[:, 0] for p in prompt_rows]
        if model.prepend_bos:
            prompts = [F.pad(p, (1, 0), value=model.bos_id) for p in prompts]
        text_emb, text_pad = embed_text_rows(model, text_rows, nar=False)  # (B, S, D), (B, S)
        state = DecodeState(text_emb, text_pad, prompts, caps.tolist(), item_names)
        sampling = Sampling(top_k, top_p, temperature, generator, min_new_frames)
        ar_generate(model, state, sampling, use_kv_cache)
        stream0 = [torch.tensor(g, dtype=torch.long, device=text.device) for g in state.generated]
        reasons, ar_steps = state.reasons, state.ar_steps
        nar_text = nar_text_rows(model, text_rows, enroll_text_lens)
    if model.num_quantizers == 1:
        codes = [s[:, None] for s in stream0]
    else:
        codes = nar_generate(model, nar_text, prompt_rows, stream0)
    return GenerationResult([c.to(text.device) for c in codes], reasons, ar_steps)
