"""VALL-E training losses (Amphion's, ``reduction="sum"``) and their random draws.

- AR: cross entropy of stream 0 (with EOS after the last frame) given the text and the frames
  before, over every frame of the padded batch (Amphion) or only the real ones
  (``ar_loss_ignore_padding``).
- NAR: one NAR stage j (1..Q-1) per step, cross entropy of stream j. What the NAR sees in front
  of the utterance depends on ``prefix_mode``, one function each: 0 nothing, 1 the first frames
  of the utterance with all streams, 2 a random span of it copied in front, 4 a chunk of another
  utterance of the same speaker (from the data pipeline).

Draws: the NAR stage and the prefix_mode 2 span starts come from ``generator`` when given, else
from the model's ``random.Random`` (Amphion; the same on every rank unless reseeded); the
prefix_mode 1 prefix length from ``generator``, else torch's global RNG (Amphion).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from modules.masks import make_pad_mask

if TYPE_CHECKING:
    from models.tts.valle.valle import VALLE

Draws = torch.Generator | None  # None: Amphion's RNGs (module docstring)
Codes = torch.Tensor | None

MAX_PROMPT_FRAMES = 225  # 3 s of 75 Hz EnCodec frames: Amphion's cap on NAR prompt length


@dataclass
class TrainBatch:
    x: torch.Tensor  # (B, S) phone ids
    x_mask: torch.Tensor  # (B, S) True = padding
    codes: torch.Tensor  # (B, T, Q) int64, 0 on padded frames
    y_lens: torch.Tensor  # (B,)
    y_mask: torch.Tensor  # (B, T) True = padding
    seq: torch.Tensor  # (B, T + 1) stream 0, EOS on padded frames and after the last frame
    frames: torch.Tensor  # float sum(y_lens), Amphion's normaliser

    @classmethod
    def from_padded(
        cls,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        y_lens: torch.Tensor,
        eos_id: int,
    ) -> TrainBatch:
        """x (B, S), y (B, T, Q) right-padded, lengths (B,)."""
        x_mask = make_pad_mask(x_lens, x.shape[1])
        y_mask = make_pad_mask(y_lens, y.shape[1])
        codes = y.long().masked_fill(y_mask[..., None], 0)  # garbage in padded frames must not leak
        seq = F.pad(codes[..., 0], (0, 1), value=0) + eos_id * F.pad(y_mask.long(), (0, 1), value=1)
        return cls(x, x_mask, codes, y_lens, y_mask, seq, y_lens.sum().float())

    @property
    def ar_input(self) -> torch.Tensor:
        """(B, T) stream 0 as decoder input: padded frames are EOS."""
        return self.seq[:, : self.codes.shape[1]]


@torch.no_grad()
def top10_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, ignore: tuple[int, ...]
) -> torch.Tensor:
    """Amphion's top-10 micro accuracy over targets not in ``ignore`` (0 if none)."""
    keep = torch.ones_like(targets, dtype=torch.bool)
    for value in ignore:
        keep &= targets != value
    top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices  # (B, T, 10)
    hits = (top10 == targets[..., None]).any(-1) & keep
    return (hits.sum().float() / keep.sum().clamp(min=1).float()).detach()


def ar_loss(model: VALLE, b: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed AR loss, top-10 accuracy x frames)."""
    T = b.codes.shape[1]
    if model.prepend_bos:
        ar_input = F.pad(b.seq[:, :T], (1, 0), value=model.bos_id)  # (B, T + 1)
        targets = b.seq  # (B, T + 1)
        audio_pad = F.pad(b.y_mask, (1, 0), value=False)
    else:
        ar_input, targets, audio_pad = b.seq[:, :T], b.seq[:, 1:], b.y_mask
    logits = model.ar_logits(b.x, b.x_mask, ar_input, audio_pad)  # (B, T', V + 1)
    if model.ar_loss_ignore_padding:
        # Corrected: only the y_lens code targets (+ the final EOS) of each row count.
        valid_targets = F.pad(~b.y_mask, (int(model.prepend_bos), 0), value=True)
        targets = targets.masked_fill(~valid_targets, -100)
    # Amphion: no ignore_index, so the padded frames (target EOS) count too.
    loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
    correct = top10_accuracy(logits, targets, ignore=(model.eos_id, -100)) * b.frames
    return loss, correct


# ------------------------------------------------------------------ random draws


def draw_nar_stage(num_quantizers: int, rng: random.Random, generator: Draws) -> int:
    """The NAR stage (1..Q-1) of a training step, uniform."""
    if generator is not None:
        return int(torch.randint(1, num_quantizers, (1,), generator=generator))
    n = num_quantizers - 1
    return rng.choices(range(1, num_quantizers), weights=[1.0 / n] * n, k=1)[0]


def draw_prefix_len(y_lens: torch.Tensor, generator: Draws) -> int:
    """prefix_mode 1 prompt length: uniform in [m, 2m) with m = min(y_lens) / 4, capped."""
    int_low = int((0.25 * y_lens.min()).long())
    if int_low == 0:
        return 0  # Amphion: torch.randint(0, 0) raises when min(y_lens) < 4. Use no prefix.
    prefix_len = int(torch.randint(int_low, 2 * int_low, size=(), generator=generator))
    return min(prefix_len, MAX_PROMPT_FRAMES)


def draw_span_starts(
    y_lens: torch.Tensor, prefix_len: int, rng: random.Random, generator: Draws
) -> list[int]:
    """prefix_mode 2: start of each row's prompt span, uniform in [0, y_lens[b] - prefix_len]
    (both ends included), drawn row by row from ``generator``, else ``rng`` (Amphion)."""
    starts = []
    for length in y_lens.tolist():
        high = int(length) - prefix_len
        if generator is not None:
            starts.append(int(torch.randint(0, high + 1, (1,), generator=generator)))
        else:
            starts.append(rng.randint(0, high))
    return starts


# ------------------------------------------------------------------ NAR input per prefix mode


@dataclass
class NarInput:
    audio: torch.Tensor  # (B, A, D) summed stream embeddings, prompt frames first
    padding: torch.Tensor  # (B, A) True = padded frame
    targets: torch.Tensor  # (B, A - skip) stream nar_stage, audio_token_num = not scored
    skip: int = 0  # leading audio frames not predicted
    unscored: int = 0  # frames per row left out of the loss normaliser


def embed_below_stage(model: VALLE, b: TrainBatch, nar_stage: int, first: int) -> torch.Tensor:
    """emb0(stream 0) + ... + emb_{nar_stage-1}(stream nar_stage-1) on frames [first, T)."""
    E = model.nar_audio_embeddings
    emb = E[0](b.ar_input[:, first:])
    for j in range(1, nar_stage):
        emb = emb + E[j](b.codes[:, first:, j])
    return emb


def embed_all_streams(model: VALLE, prompt: torch.Tensor) -> torch.Tensor:
    """Prompt frames see every stream: (B, P, Q) -> (B, P, D)."""
    E = model.nar_audio_embeddings
    emb = E[0](prompt[..., 0])
    for j in range(1, prompt.shape[-1]):
        emb = emb + E[j](prompt[..., j])
    return emb


def nar_targets(model: VALLE, b: TrainBatch, nar_stage: int) -> torch.Tensor:
    """(B, T) stream nar_stage; padded frames = audio_token_num (not scored)."""
    return b.codes[..., nar_stage] + model.audio_token_num * b.y_mask.long()


def nar_input_start(model: VALLE, b: TrainBatch, nar_stage: int, generator: Draws) -> NarInput:
    """prefix_mode 0 (no prompt) and 1 (prompt = the first frames of the same utterance, all
    streams given, not predicted)."""
    targets = nar_targets(model, b, nar_stage)
    if model.prefix_mode == 0:
        return NarInput(embed_below_stage(model, b, nar_stage, 0), b.y_mask, targets)
    P = draw_prefix_len(b.y_lens, generator)
    prompt = torch.cat([b.ar_input[:, :P, None], b.codes[:, :P, 1:]], -1)
    audio = torch.cat(
        [embed_all_streams(model, prompt), embed_below_stage(model, b, nar_stage, P)], 1
    )
    return NarInput(audio, b.y_mask, targets[:, P:], skip=P, unscored=P)


def nar_input_span(model: VALLE, b: TrainBatch, nar_stage: int, generator: Draws) -> NarInput:
    """prefix_mode 2: prompt = a random span of the same utterance, copied in front; its frames
    are not predicted. Amphion: NameError (NUM_AUDIO_TOKENS) here, and the decoder got the
    padding mask without the prompt part; fixed as lifeiteng/vall-e has it."""
    P = min(MAX_PROMPT_FRAMES, int(0.25 * b.y_lens.min().item()))
    starts = model._draw_span_starts(b.y_lens, P, generator)
    spans, targets = [], nar_targets(model, b, nar_stage)
    for row, start in enumerate(starts):
        spans.append(b.codes[row, start : start + P])
        targets[row, start : start + P] = model.audio_token_num
    return prompted_input(model, b, torch.stack(spans, dim=0), targets, nar_stage, unscored=P)


def nar_input_other(model: VALLE, b: TrainBatch, nar_stage: int, prompt: Codes) -> NarInput:
    """prefix_mode 4: prompt = a chunk of another utterance of the same speaker, from the data
    pipeline; every frame is predicted and Amphion scales the loss by 1."""
    if prompt is None:
        raise ValueError(
            "prefix_mode 4 trains the NAR with a prompt from another utterance of the same "
            "speaker: pass nar_prompt_codes (B, P, Q) (the training dataset supplies it as "
            "batch['nar_prompts'])"
        )
    B, Q = b.codes.shape[0], model.num_quantizers
    assert prompt.ndim == 3 and prompt.shape[0] == B and prompt.shape[2] == Q, (
        f"nar_prompt_codes must be (B={B}, P, Q={Q}), got {tuple(prompt.shape)}"
    )
    targets = nar_targets(model, b, nar_stage)
    return prompted_input(model, b, prompt.long(), targets, nar_stage, unscored=0)


def prompted_input(
    model: VALLE, b: TrainBatch, prompt: torch.Tensor, targets: torch.Tensor, nar_stage: int,
    unscored: int,
) -> NarInput:  # fmt: skip
    """Modes 2 and 4: prompt (B, P, Q) with all streams in front of the whole utterance."""
    audio = torch.cat(
        [embed_all_streams(model, prompt), embed_below_stage(model, b, nar_stage, 0)], 1
    )
    padding = F.pad(b.y_mask, (prompt.shape[1], 0), value=False)
    return NarInput(audio, padding, targets, skip=prompt.shape[1], unscored=unscored)


def nar_loss(
    model: VALLE,
    b: TrainBatch,
    nar_stage: int,
    generator: Draws,
    prompt: Codes,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss of NAR stage ``nar_stage``, top-10 accuracy x frames): predict stream
    ``nar_stage`` from the streams below it (and the mode's prompt)."""
    V = model.audio_token_num
    if model.prefix_mode == 4:
        inp = nar_input_other(model, b, nar_stage, prompt)
    elif model.prefix_mode == 2:
        inp = nar_input_span(model, b, nar_stage, generator)
    else:
        inp = nar_input_start(model, b, nar_stage, generator)
    text = model.embed_text(b.x, nar=True)
    key_ok = ~torch.cat([b.x_mask, inp.padding], dim=1)[:, None, None, :]  # (B, 1, 1, S + A)
    logits = model.nar_logits(text, inp.audio, key_ok, nar_stage, inp.skip)  # (B, T', V)
    total, B = b.frames, b.codes.shape[0]
    loss = F.cross_entropy(logits.transpose(1, 2), inp.targets, ignore_index=V, reduction="sum") * (
        total / (total - inp.unscored * B)
    )
    correct = top10_accuracy(logits, inp.targets, ignore=(V,)) * total
    return loss, correct
