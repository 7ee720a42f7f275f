"""VALL-E: neural codec language model TTS (https://arxiv.org/abs/2301.02111).

This file holds the parameters (their names are the checkpoint keys), weight tying, Amphion
checkpoint loading and the training forward pass. The losses and their random draws are in
``losses.py``, zero-shot decoding in ``generation.py``; shared blocks in ``modules/``.

The model is numerically the same as Amphion's ``models/tts/valle/valle.py`` (itself from
lifeiteng/vall-e) so released ``amphion/valle_libritts`` checkpoints load and give the same
numbers; ``../shared/fixtures/amphion_valle_tiny/README.md`` states the semantics in full.

- AR decoder: predicts code stream 0 frame by frame from ``[text ; audio]`` with a text-only
  (non-causal) block for text queries and a causal block for audio queries. Vocabulary
  ``audio_token_num + 1`` (the extra id is EOS = ``audio_token_num``).
- NAR decoder: NAR stage j = 1..Q-1 predicts stream j from the text and the sum of the
  embeddings of streams 0..j-1, bidirectional attention, AdaptiveLayerNorm conditioned on a
  NAR-stage embedding.

Where Amphion only crashes we do the sensible thing (each spot says "Amphion:" in a comment):
prefix_mode 2 and 4 NAR training (NameError / no prompt + a padding mask without the prompt
part; fixed as lifeiteng/vall-e has it: ../shared/fixtures/amphion_valle_prefix{2,4}/README.md),
prefix_mode 1 with ``min(y_lens) < 4`` (``torch.randint(0, 0)``), EOS at the first generated
frame (``SyntaxError``), and the NAR stage / span draws, which Amphion takes from one
``random.Random(0)`` that is identical on every GPU rank: pass ``generator=`` (seeded per rank)
or call ``seed_nar_rng(seed + rank)``. Where Amphion's behaviour changes numbers (the AR loss
counts padded frames) we match it by default and offer the fix as ``ar_loss_ignore_padding``.
"""

from __future__ import annotations

import random

import torch
import torch.nn as nn

from models.tts.valle import generation, losses
from modules.embedding import SinePositionalEmbedding, TokenEmbedding
from modules.masks import ar_attention_mask
from modules.prenet import audio_prenet, text_prenet
from modules.transformer import TransformerStack
from utils.config import ModelConfig


class VALLE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.prefix_mode in (0, 1, 2, 4), (
            f"prefix_mode must be 0, 1, 2 or 4: {cfg.prefix_mode}"
        )
        assert cfg.num_quantizers >= 1, f"num_quantizers must be >= 1, got {cfg.num_quantizers}"
        self.cfg = cfg
        V, Q = cfg.audio_token_num, cfg.num_quantizers
        self.audio_token_num = V
        self.eos_id = V  # AR vocabulary = codes + EOS (+ BOS with prepend_bos)
        self.bos_id = V + 1
        self.num_quantizers = Q
        self.prefix_mode = cfg.prefix_mode
        self.prepend_bos = cfg.prepend_bos
        self.ar_loss_ignore_padding = cfg.ar_loss_ignore_padding
        # Amphion: NAR stage (and prefix_mode 2 span) draws; same seed on every rank unless the
        # trainer reseeds (seed_nar_rng) or passes a generator to forward.
        self.rng = random.Random(0)

        # ---- AR: text + stream 0 -> next frame of stream 0 ----
        D, prenet, dropout = cfg.decoder_dim, cfg.add_prenet, cfg.dropout
        self.ar_text_embedding = TokenEmbedding(D, cfg.text_token_num)
        self.ar_audio_embedding = TokenEmbedding(D, V + 1 + int(cfg.prepend_bos))
        self.ar_text_prenet = text_prenet(D) if prenet else nn.Identity()
        self.ar_audio_prenet = audio_prenet(D) if prenet else nn.Identity()
        self.ar_text_position = SinePositionalEmbedding(D, dropout=dropout, trainable_alpha=True)
        self.ar_audio_position = SinePositionalEmbedding(D, dropout=dropout, trainable_alpha=True)
        self.ar_decoder = TransformerStack(
            D, cfg.nhead, cfg.num_decoder_layers, dropout, cfg.norm_first
        )
        self.ar_predict_layer = nn.Linear(D, V + 1, bias=False)

        # ---- NAR: text + streams < j -> stream j, for NAR stages j = 1..Q-1 ----
        if Q > 1:
            scale = cfg.nar_scale_factor  # Amphion scales width, heads and layers
            N = int(D * scale)
            # Stream 0 input includes EOS on padded frames, hence one more row.
            self.nar_audio_embeddings = nn.ModuleList(
                [TokenEmbedding(N, V + 1)] + [TokenEmbedding(N, V) for _ in range(Q - 1)]
            )
            self.nar_text_embedding = TokenEmbedding(N, cfg.text_token_num)
            self.nar_text_prenet = text_prenet(N) if prenet else nn.Identity()
            self.nar_audio_prenet = audio_prenet(N) if prenet else nn.Identity()
            # Amphion's NAR alphas are frozen at 1 but stored and applied.
            self.nar_text_position = SinePositionalEmbedding(N, 0.0, trainable_alpha=False)
            self.nar_audio_position = SinePositionalEmbedding(N, dropout, trainable_alpha=False)
            self.nar_decoder = TransformerStack(
                N, int(cfg.nhead * scale), int(cfg.num_decoder_layers * scale), dropout,
                cfg.norm_first, adaptive_norm=True,
            )  # fmt: skip
            self.nar_predict_layers = nn.ModuleList(
                nn.Linear(N, V, bias=False) for _ in range(Q - 1)
            )
            self.nar_stage_embeddings = nn.ModuleList(TokenEmbedding(N, 1) for _ in range(Q - 1))
        self.share_embedding = cfg.share_embedding and Q > 1
        self._tie_weights()

    # ------------------------------------------------------------------ weights

    def _tied_pairs(self) -> list[tuple[str, str]]:
        """(output layer, input table) names that share one tensor. Amphion's off-by-one: the
        output layer of NAR stage j+1 (predicting stream j+1) is tied to the input table of
        stream j+2; the last NAR output layer is untied."""
        if not self.share_embedding:
            return []
        return [
            (
                f"nar_predict_layers.{j}.weight",
                f"nar_audio_embeddings.{j + 2}.word_embeddings.weight",
            )
            for j in range(self.num_quantizers - 2)
        ]

    def _tie_weights(self) -> None:
        if self.share_embedding:
            for j in range(self.num_quantizers - 2):
                self.nar_predict_layers[j].weight = self.nar_audio_embeddings[j + 2].weight

    def load_amphion_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load Amphion (or our) weights with strict key checking.

        Either name of a tied pair is enough (safetensors files keep only one); if both are
        given they must be equal. A ``module.`` prefix (DDP) is stripped.
        """
        sd = dict(state_dict)
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        for out_name, in_name in self._tied_pairs():
            if out_name in sd and in_name not in sd:
                sd[in_name] = sd[out_name]
            elif in_name in sd and out_name not in sd:
                sd[out_name] = sd[in_name]
            elif in_name in sd and not torch.equal(sd[in_name], sd[out_name]):
                raise ValueError(f"tied weights {out_name} and {in_name} differ in the checkpoint")
        expected = set(self.state_dict().keys())
        missing = sorted(expected - sd.keys())
        unexpected = sorted(sd.keys() - expected)
        if missing or unexpected:
            raise KeyError(
                "checkpoint does not match the model built from the config: "
                f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
                "(check decoder_dim / num_decoder_layers / num_quantizers / add_prenet / "
                "share_embedding in the model config)"
            )
        self.load_state_dict(sd, strict=True)
        self._tie_weights()

    def seed_nar_rng(self, seed: int) -> None:
        """Reseed the NAR stage / span draws (give each GPU rank its own seed)."""
        self.rng = random.Random(seed)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute decoder layer activations in backward (less memory, ~30% more compute)."""
        self.ar_decoder.gradient_checkpointing = enabled
        if self.num_quantizers > 1:
            self.nar_decoder.gradient_checkpointing = enabled

    def stage_named_parameters(self, train_stage: int) -> list[tuple[str, nn.Parameter]]:
        """Parameters trained in a train_stage: 1 = ``ar_*``, 2 = ``nar_*``, 0 = all; never the
        NAR positional alphas (fixed at 1, Amphion's ``alpha=False``), whatever requires_grad."""
        prefix = {0: "", 1: "ar_", 2: "nar_"}[train_stage]
        fixed = {
            f"{name}.alpha"
            for name, m in self.named_modules()
            if isinstance(m, SinePositionalEmbedding) and not m.trainable_alpha
        }
        return [
            (n, p) for n, p in self.named_parameters() if n.startswith(prefix) and n not in fixed
        ]

    def set_train_stage(self, train_stage: int) -> list[nn.Parameter]:
        """Freeze everything but `stage_named_parameters(train_stage)` (no grads, so DDP and
        AdamW never touch it) and return those: what the trainer and bench/train_step train."""
        trainable = [p for _, p in self.stage_named_parameters(train_stage)]
        keep = {id(p) for p in trainable}
        for p in self.parameters():
            p.requires_grad_(id(p) in keep)
        return trainable

    # ------------------------------------------------------------------ decoder passes

    def embed_text(self, x: torch.Tensor, nar: bool) -> torch.Tensor:
        """Phone ids (B, S) -> (B, S, D) input of the AR (nar=False) or the NAR decoder."""
        if nar:
            return self.nar_text_position(self.nar_text_prenet(self.nar_text_embedding(x)))
        return self.ar_text_position(self.ar_text_prenet(self.ar_text_embedding(x)))

    def embed_ar_audio(
        self, ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stream-0 ids (B, A) -> (B, A, D); positions (B, A) per row, default 0..A-1."""
        return self.ar_audio_position(self.ar_audio_prenet(self.ar_audio_embedding(ids)), positions)

    def ar_logits(
        self, x: torch.Tensor, x_mask: torch.Tensor, ar_input: torch.Tensor, audio_pad: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced AR: x (B, S), ar_input (B, A), masks True on padding -> (B, A, V + 1)."""
        text, audio = self.embed_text(x, nar=False), self.embed_ar_audio(ar_input)
        S, A = text.shape[1], audio.shape[1]
        mask = ar_attention_mask(S, A, torch.cat([x_mask, audio_pad], dim=1))
        h = self.ar_decoder(torch.cat([text, audio], dim=1), attn_mask=mask)  # (B, S + A, D)
        return self.ar_predict_layer(h[:, S:])

    def nar_logits(
        self,
        text: torch.Tensor,
        audio: torch.Tensor,
        key_ok: torch.Tensor,
        nar_stage: int,
        skip: int = 0,
    ) -> torch.Tensor:
        """One NAR stage: embedded text (B, S, D) and summed stream embeddings (B, A, D), key_ok
        (B, 1, 1, S + A) True = visible -> logits (B, A - skip, V) of stream nar_stage for the
        audio frames after the first ``skip``."""
        audio = self.nar_audio_position(self.nar_audio_prenet(audio))
        S = text.shape[1]
        stage_embedding = self.nar_stage_embeddings[nar_stage - 1].weight  # (1, D)
        h = self.nar_decoder(torch.cat([text, audio], dim=1), stage_embedding, key_ok)
        return self.nar_predict_layers[nar_stage - 1](h[:, S + skip :])

    # ------------------------------------------------------------------ training forward

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        y_lens: torch.Tensor,
        train_stage: int,
        nar_stage: int | None = None,
        generator: torch.Generator | None = None,
        nar_prompt_codes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Summed losses, Amphion's ``reduction="sum"``.

        x (B, S) int64 phone ids right-padded, x_lens (B,); y (B, T, Q) int64 codes right-padded,
        y_lens (B,). train_stage 1 = AR, 2 = NAR, 0 = both ((AR + NAR) / 2 like Amphion).
        nar_stage forces the NAR stage (1..Q-1), else it is drawn; nar_prompt_codes (B, P, Q) is
        the prefix_mode 4 prompt (losses.py says what is drawn from where, and each mode's input).

        metrics (float tensors, detached): ar_loss, ar_top10_correct, ar_frames, nar_loss,
        nar_top10_correct, nar_frames, nar_stage for the parts that ran. Divide the losses and
        top10_correct by the frame counts (= sum(y_lens), Amphion's normaliser) to get per-frame
        loss and Amphion's top-10 accuracy (computed over non-EOS / non-ignored targets).
        """
        assert x.ndim == 2 and x_lens.shape == (x.shape[0],), f"x {x.shape}, x_lens {x_lens.shape}"
        assert y.ndim == 3 and y.shape[2] == self.num_quantizers, (
            f"y must be (B, T, {self.num_quantizers}), got {tuple(y.shape)}"
        )
        assert y_lens.shape == (y.shape[0],), f"y_lens {y_lens.shape} vs y {y.shape}"
        assert train_stage in (0, 1, 2), f"train_stage must be 0, 1 or 2, got {train_stage}"
        batch = losses.TrainBatch.from_padded(x, x_lens, y, y_lens, self.eos_id)
        metrics: dict[str, torch.Tensor] = {}
        parts = []
        if train_stage in (0, 1):
            ar_loss, ar_correct = losses.ar_loss(self, batch)
            parts.append(ar_loss)
            metrics.update(
                ar_loss=ar_loss.detach(), ar_top10_correct=ar_correct, ar_frames=batch.frames
            )
        if self.num_quantizers > 1 and train_stage in (0, 2):
            if nar_stage is None:
                nar_stage = losses.draw_nar_stage(self.num_quantizers, self.rng, generator)
            assert 1 <= nar_stage < self.num_quantizers, f"nar_stage {nar_stage} out of range"
            nar_loss, nar_correct = losses.nar_loss(
                self, batch, nar_stage, generator, nar_prompt_codes
            )
            parts.append(nar_loss)
            metrics.update(
                nar_loss=nar_loss.detach(),
                nar_top10_correct=nar_correct,
                nar_frames=batch.frames,
                nar_stage=torch.tensor(float(nar_stage)),
            )
        # Amphion halves AR + NAR in train_stage 0 (we only halve when both actually ran).
        loss = parts[0] if len(parts) == 1 else (parts[0] + parts[1]) / 2.0
        return loss, metrics

    def _draw_span_starts(
        self, y_lens: torch.Tensor, prefix_len: int, generator: torch.Generator | None
    ) -> list[int]:
        """prefix_mode 2 span starts (losses.draw_span_starts with this model's ``rng``); a
        method so a test can record the draws."""
        return losses.draw_span_starts(y_lens, prefix_len, self.rng, generator)

    # ------------------------------------------------------------------ generation

    # Batched zero-shot TTS, ``model.generate(text, text_lens, prompt_codes, prompt_lens, ...)``
    # -> GenerationResult: generation.generate (its docstring has the arguments).
    generate = generation.generate

    @torch.no_grad()
    def inference(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        enroll_x_lens: torch.Tensor | None = None,
        top_k: int = -100,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Amphion-compatible batch-1 call: x (1, S), y (1, P, Q) prompt -> (1, G, Q) codes.

        Same signature and defaults as Amphion's ``VALLE.inference`` (hence ``enroll_x_lens``,
        elsewhere called ``enroll_text_lens``): top_k = -100 means no top-k filter (sampling
        from the whole distribution, torch's global RNG). ``generate`` (default top_k = 1,
        greedy) and stage 3 (``inference.top_k``, default 100) have their own defaults; README
        "Decoding defaults" says which applies where.
        """
        assert x.shape[0] == 1 and y.shape[0] == 1, "inference() is batch 1; use generate()"
        prompt_lens = torch.tensor([y.shape[1]], device=y.device)
        result = self.generate(
            x, x_lens, y, prompt_lens, enroll_x_lens, top_k=top_k, temperature=temperature
        )
        return result.codes[0][None]
