"""TokTTS: a character-level encoder-decoder transformer over 2-codebook EnCodec tokens.

One file, top to bottom: the character table, the config, the audio token layout, the model
(encoder, decoder with cross-attention, training loss). Decoding is in ``decode.py``.

- Encoder: one character = one token (no phonemizer, no normalisation), sine positions, a
  bidirectional ``modules.transformer.TransformerStack`` with the padding hidden.
- Decoder: causal over audio tokens, cross-attention to the encoder output in every layer
  (``modules.cross_attention.CrossAttentionDecoder``).
- Audio: EnCodec 24 kHz at 1.5 kbps = C = 2 codebooks of K = 1024 codes, 75 frames/s; only the
  first ``max_audio_seconds`` (default 2 s -> 150 frames -> 300 tokens) of an utterance are used.

Token layout (frame-major). Frame f, codebook c is the flat token at index ``f * C + c``:
``f0c0, f0c1, f1c0, f1c1, ...``, so a frame is complete before the next starts (the decoder
stops on a frame boundary, and codebook 1 is predicted seeing codebook 0 of the same frame, as
residual quantisation intends). Token ids carry a per-codebook offset: ``id = c * K + code``,
then BOS = ``C * K`` and EOS = ``C * K + 1`` (vocabulary C * K + 2). We chose offsets over a
codebook embedding because with offsets the codebook is part of the token: the two codebooks get
their own embedding rows and output classes, and the logits can be restricted to the legal ids
of each position (``legal_mask``): codebook c's range, plus EOS at a frame boundary after at least
one frame. The restriction is applied in the loss and in decoding alike, so generated tokens are
always valid codes and whole frames.

BOS/EOS: the decoder input is ``[BOS, t0, ..., t_{N-2}]`` for targets ``[t0, ..., t_{N-1}]``; an
utterance shorter than the cap gets EOS as one more target (it learns to stop), one cut at the
cap does not (it did not end there; decoding stops at the cap).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.cross_attention import CrossAttentionDecoder, CrossKV
from modules.embedding import SinePositionalEmbedding, TokenEmbedding
from modules.transformer import KVCache, TransformerStack
from utils.config_loader import build, check
from utils.fileio import atomic_write_text

IGNORE = -100  # target id skipped by the loss (padding)


# --------------------------------------------------------------------------------------------
# Characters
# --------------------------------------------------------------------------------------------


class UnknownCharacterError(ValueError):
    """A text holds characters the model was not trained on; the message lists them."""


class CharTable:
    """Characters <-> ids. Id 0 is padding; characters get 1..N in table order.

    There is no <unk>: a character outside the table raises ``UnknownCharacterError`` naming it,
    because silently dropping or replacing it would make the model say something else.
    """

    FORMAT = "codectts-chars-1"

    def __init__(self, chars: list[str]):
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"character table entries must be single characters, got {bad[:5]}")
        if len(set(chars)) != len(chars):
            raise ValueError("character table entries must be unique")
        self.chars = list(chars)
        self.ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> CharTable:
        """Every character of the texts, sorted by code point (deterministic)."""
        return cls(sorted({c for t in texts for c in t}))

    def __len__(self) -> int:
        """Embedding rows needed: the characters + padding."""
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.ids})
        if unknown:
            raise UnknownCharacterError(
                f"text {text!r} has characters not in the model's character table: "
                f"{', '.join(repr(c) for c in unknown)}; remove or replace them"
            )
        if not text:
            raise ValueError("empty text: nothing to say")
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != 0)

    def save(self, path: str | os.PathLike) -> Path:
        data = {"format": self.FORMAT, "pad_id": 0, "chars": self.chars}
        return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTable:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the character table ({e})") from None
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not a character table (expected format {cls.FORMAT!r})")
        try:
            return cls(data.get("chars"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class TokTTSConfig:
    vocab_size: int = 0  # character table size incl. padding (len(CharTable))
    dim: int = 256  # transformer width (encoder and decoder)
    nhead: int = 4  # attention heads
    encoder_layers: int = 4  # character encoder layers
    decoder_layers: int = 4  # audio decoder layers (self + cross-attention)
    dropout: float = 0.1  # dropout (training only)
    num_codebooks: int = 2  # EnCodec codebooks modelled (1.5 kbps = 2)
    codebook_size: int = 1024  # codes per codebook
    frame_rate: int = 75  # codec frames per second (EnCodec 24 kHz)
    max_audio_seconds: float = 2.0  # audio modelled per utterance (the first seconds)

    def validate(self) -> None:
        check(self.vocab_size > 1, "vocab_size", "must be > 1 (characters + padding)")
        check(self.dim > 0 and self.dim % 2 == 0, "dim", "must be a positive even number")
        check(self.nhead > 0 and self.dim % self.nhead == 0, "nhead", "must divide dim")
        check(self.encoder_layers > 0, "encoder_layers", "must be positive")
        check(self.decoder_layers > 0, "decoder_layers", "must be positive")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.num_codebooks > 0, "num_codebooks", "must be positive")
        check(self.codebook_size > 0, "codebook_size", "must be positive")
        check(self.frame_rate > 0, "frame_rate", "must be positive")
        check(self.max_frames >= 1, "max_audio_seconds", "must give at least one frame")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> TokTTSConfig:
        """Typed and validated; an unknown key or a wrong type names the key and ``source``."""
        return build(cls, data, source)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def max_frames(self) -> int:
        return round(self.max_audio_seconds * self.frame_rate)

    @property
    def max_tokens(self) -> int:
        return self.max_frames * self.num_codebooks

    @property
    def bos_id(self) -> int:
        return self.num_codebooks * self.codebook_size

    @property
    def eos_id(self) -> int:
        return self.bos_id + 1

    @property
    def audio_vocab_size(self) -> int:
        return self.eos_id + 1


# --------------------------------------------------------------------------------------------
# Audio token layout
# --------------------------------------------------------------------------------------------


def codes_to_tokens(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(F, C) codes -> (F * C,) flat frame-major token ids with per-codebook offsets."""
    offsets = torch.arange(codes.shape[1], device=codes.device) * codebook_size
    return (codes.long() + offsets).reshape(-1)


def tokens_to_codes(tokens: torch.Tensor, num_codebooks: int, codebook_size: int) -> torch.Tensor:
    """(F * C,) flat token ids -> (F, C) codes (the inverse of codes_to_tokens)."""
    assert tokens.numel() % num_codebooks == 0, f"{tokens.numel()} tokens: not whole frames"
    offsets = torch.arange(num_codebooks, device=tokens.device) * codebook_size
    codes = tokens.view(-1, num_codebooks) - offsets
    assert bool(((codes >= 0) & (codes < codebook_size)).all()), "a token outside its codebook"
    return codes


def legal_mask(cfg: TokTTSConfig, positions: int, device: torch.device) -> torch.Tensor:
    """(positions, V) bool: which ids may be predicted at output index i (True = legal).

    Index i predicts codebook i % C; EOS is legal only at a frame boundary after >= 1 frame."""
    C, K = cfg.num_codebooks, cfg.codebook_size
    i = torch.arange(positions, device=device)[:, None]  # (P, 1)
    ids = torch.arange(cfg.audio_vocab_size, device=device)[None, :]  # (1, V)
    in_codebook = (ids >= (i % C) * K) & (ids < (i % C + 1) * K)
    eos_ok = (ids == cfg.eos_id) & (i % C == 0) & (i > 0)
    return in_codebook | eos_ok


@dataclass
class TokTTSBatch:
    text: torch.Tensor  # (B, S) char ids, right-padded with 0
    text_lens: torch.Tensor  # (B,)
    inputs: torch.Tensor  # (B, L) decoder input: BOS + targets[:-1], padded with EOS
    targets: torch.Tensor  # (B, L) flat audio tokens (+ EOS if not cut), padded with IGNORE


def make_batch(
    cfg: TokTTSConfig, text_rows: list[torch.Tensor], code_rows: list[torch.Tensor]
) -> TokTTSBatch:
    """Char id rows (S_b,) and code rows (F_b, C) -> a training batch. Codes are cut to the
    first ``max_frames`` frames; see the module doc for BOS/EOS."""
    assert len(text_rows) == len(code_rows), "one code row per text row"
    inputs, targets = [], []
    for codes in code_rows:
        assert codes.ndim == 2 and codes.shape[1] == cfg.num_codebooks, (
            f"codes must be (frames, {cfg.num_codebooks}), got {tuple(codes.shape)}"
        )
        assert len(codes) >= 1, "an utterance needs at least one frame"
        tokens = codes_to_tokens(codes[: cfg.max_frames], cfg.codebook_size)
        if len(codes) < cfg.max_frames:
            tokens = F.pad(tokens, (0, 1), value=cfg.eos_id)
        targets.append(tokens)
        inputs.append(F.pad(tokens[:-1], (1, 0), value=cfg.bos_id))
    pad = nn.utils.rnn.pad_sequence
    return TokTTSBatch(
        text=pad([t.long() for t in text_rows], batch_first=True, padding_value=0),
        text_lens=torch.tensor([len(t) for t in text_rows], device=text_rows[0].device),
        inputs=pad(inputs, batch_first=True, padding_value=cfg.eos_id),
        targets=pad(targets, batch_first=True, padding_value=IGNORE),
    )


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class TokTTS(nn.Module):
    def __init__(self, cfg: TokTTSConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.char_embedding = TokenEmbedding(cfg.dim, cfg.vocab_size)
        self.char_position = SinePositionalEmbedding(cfg.dim, cfg.dropout)
        self.encoder = TransformerStack(cfg.dim, cfg.nhead, cfg.encoder_layers, cfg.dropout)
        self.audio_embedding = TokenEmbedding(cfg.dim, cfg.audio_vocab_size)
        self.audio_position = SinePositionalEmbedding(cfg.dim, cfg.dropout)
        self.decoder = CrossAttentionDecoder(cfg.dim, cfg.nhead, cfg.decoder_layers, cfg.dropout)
        self.head = nn.Linear(cfg.dim, cfg.audio_vocab_size, bias=False)
        # (max_tokens + 1, V) legal ids per output index: a buffer so it follows .to(device),
        # not saved (it is a function of the config).
        self.register_buffer(
            "legal", legal_mask(cfg, cfg.max_tokens + 1, torch.device("cpu")), persistent=False
        )

    def encode(self, text: torch.Tensor, text_lens: torch.Tensor) -> CrossKV:
        """text (B, S) char ids, text_lens (B,) -> every decoder layer's cross keys/values."""
        S = text.shape[1]
        key_ok = torch.arange(S, device=text.device)[None, :] < text_lens[:, None]  # (B, S)
        x = self.char_position(self.char_embedding(text))  # (B, S, D)
        memory = self.encoder(x, attn_mask=key_ok[:, None, None, :])  # (B, S, D)
        return self.decoder.memory_kv(memory, key_ok)

    def decode(
        self,
        tokens: torch.Tensor,
        cross: CrossKV,
        cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """tokens (B, L) decoder input at output indices start..start+L-1 -> logits (B, L, V),
        illegal ids at -inf. With a cache, ``tokens`` are the new positions only."""
        L = tokens.shape[1]
        positions = torch.arange(start, start + L, device=tokens.device).expand_as(tokens)
        x = self.audio_position(self.audio_embedding(tokens), positions)  # (B, L, D)
        logits = self.head(self.decoder(x, cross, cache))  # (B, L, V)
        return logits.masked_fill(~self.legal[start : start + L], float("-inf"))

    def forward(self, batch: TokTTSBatch) -> torch.Tensor:
        """Teacher-forced logits (B, L, V)."""
        return self.decode(batch.inputs, self.encode(batch.text, batch.text_lens))

    def loss(self, batch: TokTTSBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the real targets, and (B, L) per-token accuracy (greedy)."""
        logits = self(batch)
        loss = F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=IGNORE)
        correct = (logits.argmax(-1) == batch.targets) & (batch.targets != IGNORE)
        return loss, correct
