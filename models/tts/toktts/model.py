"""TokTTS: a character-level encoder-decoder transformer over 2-codebook EnCodec tokens.

One file, top to bottom: the character table, the audio token layout, the model (encoder,
decoder with cross-attention, training loss). Decoding is in ``decode.py``; the config
(``TokTTSConfig``, re-exported here) is in ``utils/toktts_config.py`` because stage 1 reads it.

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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.cross_attention import CrossAttentionDecoder, CrossKV
from modules.embedding import SinePositionalEmbedding, TokenEmbedding
from modules.transformer import KVCache, TransformerStack
from text.chars import CharTable, UnknownCharacterError
from utils.toktts_config import TokTTSConfig

__all__ = [
    "CharTable",
    "UnknownCharacterError",
    "TokTTSConfig",
    "TokTTS",
    "TokTTSBatch",
    "make_batch",
]

IGNORE = -100  # target id skipped by the loss (padding)


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
