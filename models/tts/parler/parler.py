"""Parler-TTS: a description-conditioned codec language model, exact to the parler-tts package.

    description ids ─ T5 encoder (frozen) ─ enc_to_dec_proj ─ × mask ─┐ cross-attention memory
    transcript ids ── embed_prompts ──┐                               │
    codes (B, K, T) ─ Σ_k embed_tokens[k] ─ [prompt ; audio] + PE ─ N × decoder layer ─ LN
                                                                    ─ lm_heads[k] -> (B, K, T, V)

The decoder is MusicGen's: one embedding table per codebook (summed), one LM head per codebook,
codebooks offset by the delay pattern (`delay.py`), pre-norm layers with self-attention,
cross-attention to the description and a GELU feed-forward. Parameter names are the package's
(`decoder.model.decoder.layers.0.self_attn.q_proj.weight`, ...), so a released folder's
`model.safetensors` loads with strict keys (`pretrained.py`). Generation lives in `generate.py`.

Positions. The package counts positions over [prompt ; audio] including the prompt's left
padding, so an item gets other numbers alone and inside a padded batch. We number each item's
real prompt tokens 0 .. P_b - 1 and its audio P_b + t (the package's single-item numbers) at any
padding; `package_positions=True` reproduces the package's padded-batch numbers (only to check
against its outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.tts.parler.delay import IGNORE, decoder_inputs
from modules.transformer import KVCache


@dataclass
class ParlerConfig:
    """Architecture (the HF config.json's decoder section + top-level keys; `pretrained.py`)."""

    text_encoder: dict = field(default_factory=dict)  # T5Config keyword arguments
    prompt_vocab_size: int = 32128  # top-level vocab_size: rows of embed_prompts
    num_codebooks: int = 9
    vocab_size: int = 1088  # decoder output classes: codebook_size + specials, rounded up
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    ffn_dim: int = 4096
    max_position_embeddings: int = 4096
    layer_norm_eps: float = 1e-5  # nn.LayerNorm's default, as in the package
    dropout: float = 0.1  # after embeddings, attention outputs and fc2 (training only)
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pad_token_id: int = 1024  # = EOS of the audio streams
    eos_token_id: int = 1024
    bos_token_id: int = 1025  # decoder_start_token_id

    @property
    def text_width(self) -> int:
        return int(self.text_encoder.get("d_model", 512))


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) = [cos(p f_0..h-1) | sin(p f_0..h-1)], f_i = exp(-i ln(1e4) / (h-1)).

    Cosines first and divisor h - 1 (not h), computed in float32 exactly like the package so the
    table equals the stored `embed_positions.weights` bitwise (float64 differs by ~1e-5)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freqs[None]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(table, (0, 1)) if dim % 2 else table


def additive_mask(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (B, Lq, Lk), True = may attend -> (B, 1, Lq, Lk) float: 0 or dtype's min.

    The package adds the dtype's min (not -inf): a query row that sees no key (a padded prompt
    slot) becomes a finite uniform average instead of NaN, and no NaN can leak through values."""
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    return mask.masked_fill(~ok, torch.finfo(dtype).min)[:, None]


class Attention(nn.Module):
    """Multi-head attention without biases (q/k/v/out_proj), SDPA compute, scale 1/sqrt(hd)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, hd)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S, D) -> keys, values (B, H, S, hd)."""
        return self._split(self.k_proj(src)), self._split(self.v_proj(src))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        """x (B, L, D) queries over k, v (B, H, S, hd), additive mask (B, 1, L, S) -> (B, L, D)."""
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(self._split(self.q_proj(x)), k, v, mask, p)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """Pre-norm: x += SelfAttn(LN x); x += CrossAttn(LN x, description); x += FFN(LN x)."""

    def __init__(self, cfg: ParlerConfig):
        super().__init__()
        D = cfg.hidden_size
        self.self_attn = Attention(D, cfg.num_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.encoder_attn = Attention(D, cfg.num_attention_heads, cfg.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(D, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, D, bias=False)
        self.final_layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.dropout, self.activation_dropout = cfg.dropout, cfg.activation_dropout

    def forward(self, x, self_mask, cross_kv, cross_mask, cache: KVCache | None, index: int):
        """x (B, L, D); cross_kv = keys/values of the description (B, H, S, hd) each."""
        drop = self.dropout if self.training else 0.0
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:  # append this pass's keys; attend over everything cached
            k, v = cache.write(index, k, v)
        x = x + F.dropout(self.self_attn.attend(h, k, v, self_mask), drop, self.training)
        h = self.encoder_attn.attend(self.encoder_attn_layer_norm(x), *cross_kv, cross_mask)
        x = x + F.dropout(h, drop, self.training)
        h = F.gelu(self.fc1(self.final_layer_norm(x)))  # exact (erf) GELU
        h = F.dropout(h, self.activation_dropout if self.training else 0.0, self.training)
        return x + F.dropout(self.fc2(h), drop, self.training)


class DecoderStack(nn.Module):
    """The package's `ParlerTTSDecoder`: code embeddings, positions, layers, final LayerNorm."""

    def __init__(self, cfg: ParlerConfig):
        super().__init__()
        # vocab_size + 1 rows per table (the package's layout; the last row is never used).
        self.embed_tokens = nn.ModuleList(
            nn.Embedding(cfg.vocab_size + 1, cfg.hidden_size) for _ in range(cfg.num_codebooks)
        )
        # A frozen parameter (not a buffer) because released checkpoints store it.
        table = sinusoid_table(cfg.max_position_embeddings, cfg.hidden_size)
        self.embed_positions = nn.Module()
        self.embed_positions.weights = nn.Parameter(table, requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T) -> (B, T, D): sum over codebooks, in codebook order (as the package)."""
        x = self.embed_tokens[0](codes[:, 0])
        for k in range(1, codes.shape[1]):
            x = x + self.embed_tokens[k](codes[:, k])
        return x


@dataclass
class ParlerOutput:
    logits: torch.Tensor  # (B, K, T, V) audio part only
    loss: torch.Tensor | None = None  # sum_k loss_k / K
    per_codebook_loss: torch.Tensor | None = None  # (K,)
    loss_mask: torch.Tensor | None = None  # (B, T, K) positions in the loss
    encoder_hidden_states: torch.Tensor | None = None  # (B, S, D) projected, masked
    inputs_embeds: torch.Tensor | None = None  # (B, P + T, D) incl. positions
    hidden_states: torch.Tensor | None = None  # (B, P + T, D) after the final LayerNorm


class ParlerTTS(nn.Module):
    """Text encoder + prompt embedding + MusicGen decoder, with the package's parameter names."""

    def __init__(self, cfg: ParlerConfig):
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        self.cfg = cfg
        t5 = T5Config(**cfg.text_encoder)
        t5._attn_implementation = "eager"  # the package's T5 (no 1/sqrt(d), fp32 softmax)
        self.text_encoder = T5EncoderModel(t5)
        # Present only when the widths differ (Parler-TTS Large; not Mini), as in the package.
        if cfg.text_width != cfg.hidden_size:
            self.enc_to_dec_proj = nn.Linear(cfg.text_width, cfg.hidden_size)
        self.embed_prompts = nn.Embedding(cfg.prompt_vocab_size, cfg.hidden_size)
        heads = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_codebooks)
        )
        # The package's layout: decoder.model.decoder.* (ParlerTTSForCausalLM.model.decoder)
        # and decoder.lm_heads.*
        self.decoder = nn.ModuleDict(
            {"model": nn.ModuleDict({"decoder": DecoderStack(cfg)}), "lm_heads": heads}
        )

    @property
    def stack(self) -> DecoderStack:
        return self.decoder["model"]["decoder"]

    def freeze_text_encoder(self) -> None:
        """The description encoder is not trained (the released models' recipe)."""
        self.text_encoder.requires_grad_(False)

    # ---------------------------------------------------------------- building blocks
    def encode_description(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(B, S) ids + mask -> cross-attention memory (B, S, D): T5 -> projection -> × mask.
        The projection comes first, so padded rows are exactly 0 (as in the package)."""
        frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            h = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        h = h.last_hidden_state
        if hasattr(self, "enc_to_dec_proj"):
            h = self.enc_to_dec_proj(h)
        return h * attention_mask[..., None].to(h.dtype)

    def cross_keys_values(self, enc: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the cross-attention keys/values of the memory (computed once per utterance
        in generation: the description does not change between steps)."""
        return [layer.encoder_attn.keys_values(enc) for layer in self.stack.layers]

    def positions(self, prompt_mask: torch.Tensor, T: int, package: bool = False):
        """(B, P) prompt mask -> (B, P + T) positions of [prompt ; T audio steps].

        Per item (default): real prompt tokens 0 .. P_b - 1 in order, audio step t at P_b + t,
        whatever the padding side. package=True: 0 .. P + T - 1 for every row (padding counted).
        """
        B, P = prompt_mask.shape
        if package:
            return torch.arange(P + T, device=prompt_mask.device).expand(B, -1)
        count = prompt_mask.long().cumsum(1)  # (B, P)
        prompt_pos = (count - 1).clamp(min=0)  # padded slots: any valid index (never seen)
        audio_pos = count[:, -1:] + torch.arange(T, device=prompt_mask.device)  # (B, T)
        return torch.cat([prompt_pos, audio_pos], dim=1)

    def check_positions(self, positions: torch.Tensor) -> None:
        """The sinusoid table is a stored parameter of max_position_embeddings rows."""
        rows = self.stack.embed_positions.weights.shape[0]
        if int(positions.max()) >= rows:
            raise ValueError(
                f"position {int(positions.max())} is beyond max_position_embeddings = {rows}: "
                "shorten the transcript or the length cap (max_new_tokens)"
            )

    def embed(self, prompt_embeds, codes: torch.Tensor, positions: torch.Tensor):
        """prompt_embeds (B, P, D) or None (later cached steps), codes (B, K, T), positions
        (B, P + T) -> decoder input (B, P + T, D)."""
        x = self.stack.embed_codes(codes)
        if prompt_embeds is not None:
            x = torch.cat([prompt_embeds.to(x.dtype), x], dim=1)
        self.check_positions(positions)
        x = x + self.stack.embed_positions.weights[positions].to(x.dtype)
        return F.dropout(x, self.cfg.dropout if self.training else 0.0, self.training)

    def run_decoder(self, x, self_ok, cross_kv, cross_ok, cache: KVCache | None = None):
        """x (B, L, D); self_ok (B, L, L_keys) / cross_ok (B, S) bool visibility
        -> hidden (B, L, D) after the final LayerNorm."""
        self_mask = additive_mask(self_ok, x.dtype)
        cross_mask = additive_mask(cross_ok[:, None, :], x.dtype)
        for i, layer in enumerate(self.stack.layers):
            x = layer(x, self_mask, cross_kv[i], cross_mask, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.stack.layer_norm(x)

    def heads(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> logits (B, K, L, V), one head per codebook."""
        return torch.stack([head(hidden) for head in self.decoder["lm_heads"]], dim=1)

    # ---------------------------------------------------------------- teacher forcing
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_input_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        package_positions: bool = False,
    ) -> ParlerOutput:
        """Teacher-forced pass. input_ids/attention_mask (B, S) description; prompt ids/mask
        (B, P) transcript; labels (B, T, K) from `delay.delayed_labels` (decoder inputs derived
        from them) or decoder_input_ids (B, K, T) without a loss."""
        if labels is not None:
            decoder_input_ids = decoder_inputs(labels, self.cfg.bos_token_id, self.cfg.pad_token_id)
        assert decoder_input_ids is not None, "give labels or decoder_input_ids"
        B, K, T = decoder_input_ids.shape
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones_like(prompt_input_ids)
        enc = self.encode_description(input_ids, attention_mask)  # (B, S, D)
        positions = self.positions(prompt_attention_mask, T, package_positions)
        x = self.embed(self.embed_prompts(prompt_input_ids), decoder_input_ids, positions)
        L = x.shape[1]
        # Query i sees key j iff j <= i and j is a real token (audio steps always are).
        valid = torch.cat([prompt_attention_mask.bool(), x.new_ones(B, T, dtype=torch.bool)], 1)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        hidden = self.run_decoder(
            x, causal[None] & valid[:, None, :], self.cross_keys_values(enc), attention_mask.bool()
        )
        logits = self.heads(hidden[:, -T:])  # (B, K, T, V)
        out = ParlerOutput(logits, encoder_hidden_states=enc, inputs_embeds=x, hidden_states=hidden)
        if labels is not None:
            out.loss, out.per_codebook_loss, out.loss_mask = self.loss(
                logits, labels, decoder_input_ids, loss_reduction
            )
        return out

    def loss(self, logits, labels, decoder_input_ids, reduction: str = "mean"):
        """Per-codebook cross-entropy as the package computes it: a position (b, t, k) counts iff
        its label is neither IGNORE nor BOS and its decoder input is not EOS (one EOS target per
        codebook, the later EOS labels are skipped); loss = sum_k loss_k / K (also for "sum")."""
        assert reduction in ("mean", "sum"), f"loss_reduction must be mean or sum, not {reduction}"
        K = logits.shape[1]
        targets = labels.masked_fill(labels == self.cfg.bos_token_id, IGNORE)  # (B, T, K)
        mask = (targets != IGNORE) & (decoder_input_ids.transpose(1, 2) != self.cfg.eos_token_id)
        per_codebook = torch.stack(
            [
                F.cross_entropy(logits[:, k][mask[..., k]].float(), targets[..., k][mask[..., k]],
                                reduction=reduction)
                for k in range(K)
            ]
        )  # fmt: skip
        return per_codebook.sum() / K, per_codebook, mask
