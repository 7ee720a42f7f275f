"""VALL-E: neural codec language model TTS (https://arxiv.org/abs/2301.02111).

One file, top to bottom: construction, training forward (AR and NAR losses), checkpoint loading,
zero-shot generation (batched, KV-cached AR loop + batched NAR stages).

The model is numerically the same as Amphion's ``models/tts/valle/valle.py`` (itself from
lifeiteng/vall-e) so released ``amphion/valle_libritts`` checkpoints load and give the same
numbers; ``../shared/fixtures/amphion_valle_tiny/README.md`` states the semantics in full.

- AR decoder: predicts code stream 0 frame by frame from ``[text ; audio]`` with a text-only
  (non-causal) block for text queries and a causal block for audio queries. Vocabulary
  ``audio_token_num + 1`` (the extra id is EOS = ``audio_token_num``).
- NAR decoder: stage j = 1..Q-1 predicts stream j from the text and the sum of the embeddings
  of streams 0..j-1, bidirectional attention, AdaptiveLayerNorm conditioned on a stage embedding.

Where Amphion only crashes we do the sensible thing (each spot says "Amphion:" in a comment):
prefix_mode 2 and 4 NAR training (NameError / no prompt + a padding mask without the prompt
part; fixed as lifeiteng/vall-e has it: ../shared/fixtures/amphion_valle_prefix{2,4}/README.md),
prefix_mode 1 with ``min(y_lens) < 4``
(``torch.randint(0, 0)``), EOS at the first generated frame (``SyntaxError``), and the NAR
stage / span draws, which Amphion takes from one ``random.Random(0)`` that is identical on every
GPU rank: pass ``generator=`` (seeded per rank) or call ``seed_nar_rng(seed + rank)``.
Where Amphion's behaviour changes numbers (the AR loss counts padded frames) we match it by
default and offer the fix as ``ar_loss_ignore_padding=True``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.embedding import SinePositionalEmbedding, TokenEmbedding
from modules.sampling import sample
from modules.transformer import KVCache, TransformerStack

if TYPE_CHECKING:
    from utils.config import ModelConfig

logger = logging.getLogger(__name__)

MAX_PROMPT_FRAMES = 225  # 3 s of 75 Hz EnCodec frames: Amphion's cap on NAR prompt length


def make_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths (B,) -> (B, max_len) bool, True on padding positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def pad_1d(rows: list[torch.Tensor], value: int = 0) -> torch.Tensor:
    """Right-pad 1-D (or (L, ...)) tensors to a batch."""
    return nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


class Transpose(nn.Module):
    """(B, T, D) <-> (B, D, T) for the convolutional text prenet."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def text_prenet(dim: int) -> nn.Sequential:
    """Amphion's 3 x (conv5 + BN + ReLU + dropout) text prenet (its index layout is kept)."""
    layers: list[nn.Module] = [Transpose()]
    for _ in range(3):
        layers += [
            nn.Conv1d(dim, dim, kernel_size=5, padding="same"),
            nn.BatchNorm1d(dim),
            nn.ReLU(),
            nn.Dropout(0.5),
        ]
    return nn.Sequential(*layers, Transpose(), nn.Linear(dim, dim))


def audio_prenet(dim: int) -> nn.Sequential:
    """Amphion's per-frame MLP audio prenet."""
    return nn.Sequential(
        nn.Linear(dim, 256),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(256, dim),
    )


def ar_attention_mask(text_len: int, audio_len: int, key_padding: torch.Tensor) -> torch.Tensor:
    """(B, 1, S+A, S+A) bool, True = may attend. Text queries see the text (no causality);
    audio query t sees the text and audio frames <= t; padded keys are hidden from everyone."""
    n = text_len + audio_len
    i = torch.arange(n, device=key_padding.device)[:, None]
    k = torch.arange(n, device=key_padding.device)[None, :]
    allowed = (k < text_len) | ((i >= text_len) & (k <= i))  # (n, n)
    return allowed[None, None] & ~key_padding[:, None, None, :]


def check_mode4_prompt(prompt: torch.Tensor | None, batch: int, num_quantizers: int) -> None:
    """prefix_mode 4 trains the NAR with a prompt from another utterance: it must be given."""
    if prompt is None:
        raise ValueError(
            "prefix_mode 4 trains the NAR with a prompt from another utterance of the same "
            "speaker: pass nar_prompt_codes (B, P, Q) (the training dataset supplies it as "
            "batch['nar_prompts'])"
        )
    assert prompt.ndim == 3 and prompt.shape[0] == batch and prompt.shape[2] == num_quantizers, (
        f"nar_prompt_codes must be (B={batch}, P, Q={num_quantizers}), got {tuple(prompt.shape)}"
    )


@dataclass
class GenerationResult:
    codes: list[torch.Tensor]  # per item, (G_i, Q) int64, prompt frames excluded
    stop_reasons: list[str]  # per item: "eos", "cap" (or "continual": no AR loop ran)
    ar_steps: int  # AR forward passes run (a KV-cache prefill counts as one)


class VALLE(nn.Module):
    def __init__(
        self,
        decoder_dim: int,
        nhead: int,
        num_decoder_layers: int,
        text_token_num: int,
        audio_token_num: int = 1024,
        num_quantizers: int = 8,
        norm_first: bool = True,
        add_prenet: bool = False,
        prefix_mode: int = 0,
        share_embedding: bool = True,
        nar_scale_factor: float = 1.0,
        prepend_bos: bool = False,
        dropout: float = 0.1,
        ar_loss_ignore_padding: bool = False,
    ):
        super().__init__()
        assert prefix_mode in (0, 1, 2, 4), f"prefix_mode must be 0, 1, 2 or 4, got {prefix_mode}"
        assert num_quantizers >= 1, f"num_quantizers must be >= 1, got {num_quantizers}"
        self.audio_token_num = audio_token_num
        self.eos_id = audio_token_num  # AR vocabulary = codes + EOS (+ BOS with prepend_bos)
        self.bos_id = audio_token_num + 1
        self.num_quantizers = num_quantizers
        self.prefix_mode = prefix_mode
        self.prepend_bos = prepend_bos
        self.ar_loss_ignore_padding = ar_loss_ignore_padding
        # Amphion: NAR stage (and prefix_mode 2 span) draws; same seed on every rank unless the
        # trainer reseeds (seed_nar_rng) or passes a generator to forward.
        self.rng = random.Random(0)

        # ---- AR: text + stream 0 -> next frame of stream 0 ----
        D = decoder_dim
        self.ar_text_embedding = TokenEmbedding(D, text_token_num)
        self.ar_audio_embedding = TokenEmbedding(D, audio_token_num + 1 + int(prepend_bos))
        self.ar_text_prenet = text_prenet(D) if add_prenet else nn.Identity()
        self.ar_audio_prenet = audio_prenet(D) if add_prenet else nn.Identity()
        self.ar_text_position = SinePositionalEmbedding(D, dropout=dropout, trainable_alpha=True)
        self.ar_audio_position = SinePositionalEmbedding(D, dropout=dropout, trainable_alpha=True)
        self.ar_decoder = TransformerStack(D, nhead, num_decoder_layers, dropout, norm_first)
        self.ar_predict_layer = nn.Linear(D, audio_token_num + 1, bias=False)

        # ---- NAR: text + streams < j -> stream j, for j = 1..Q-1 ----
        if num_quantizers > 1:
            nar_dim = int(decoder_dim * nar_scale_factor)  # Amphion scales width, heads, layers
            nar_nhead = int(nhead * nar_scale_factor)
            nar_layers = int(num_decoder_layers * nar_scale_factor)
            # Stream 0 input includes EOS on padded frames, hence one more row.
            self.nar_audio_embeddings = nn.ModuleList(
                [TokenEmbedding(nar_dim, audio_token_num + 1)]
                + [TokenEmbedding(nar_dim, audio_token_num) for _ in range(num_quantizers - 1)]
            )
            self.nar_text_embedding = TokenEmbedding(nar_dim, text_token_num)
            self.nar_text_prenet = text_prenet(nar_dim) if add_prenet else nn.Identity()
            self.nar_audio_prenet = audio_prenet(nar_dim) if add_prenet else nn.Identity()
            # Amphion's NAR alphas are frozen at 1 but stored and applied.
            self.nar_text_position = SinePositionalEmbedding(nar_dim, 0.0, trainable_alpha=False)
            self.nar_audio_position = SinePositionalEmbedding(
                nar_dim, dropout, trainable_alpha=False
            )
            self.nar_decoder = TransformerStack(
                nar_dim, nar_nhead, nar_layers, dropout, norm_first, adaptive_norm=True
            )
            self.nar_predict_layers = nn.ModuleList(
                nn.Linear(nar_dim, audio_token_num, bias=False) for _ in range(num_quantizers - 1)
            )
            self.nar_stage_embeddings = nn.ModuleList(
                TokenEmbedding(nar_dim, 1) for _ in range(num_quantizers - 1)
            )
        self.share_embedding = share_embedding and num_quantizers > 1
        self._tie_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> VALLE:
        return cls(
            decoder_dim=cfg.decoder_dim,
            nhead=cfg.nhead,
            num_decoder_layers=cfg.num_decoder_layers,
            text_token_num=cfg.text_token_num,
            audio_token_num=cfg.audio_token_num,
            num_quantizers=cfg.num_quantizers,
            norm_first=cfg.norm_first,
            add_prenet=cfg.add_prenet,
            prefix_mode=cfg.prefix_mode,
            share_embedding=cfg.share_embedding,
            nar_scale_factor=cfg.nar_scale_factor,
            prepend_bos=cfg.prepend_bos,
            dropout=cfg.dropout,
            ar_loss_ignore_padding=cfg.ar_loss_ignore_padding,
        )

    # ------------------------------------------------------------------ weights

    def _tied_pairs(self) -> list[tuple[str, str]]:
        """(output layer, input table) names that share one tensor. Amphion's off-by-one: the
        output layer of stage j+1 (predicting stream j+1) is tied to the input table of stream
        j+2; the last NAR output layer is untied."""
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
        nar_stage forces the NAR stage (1..Q-1); otherwise it is drawn from ``generator`` if
        given, else from ``self.rng`` (Amphion). The prefix_mode 1 prefix length is drawn from
        ``generator``, else from torch's global RNG (Amphion). nar_prompt_codes (B, P, Q) is the
        prefix_mode 4 prompt, required there for the NAR: a chunk of another utterance of the same
        speaker, supplied by the data pipeline (dataset.SpeakerPrompts), as Amphion designed it.

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
        S, T = x.shape[1], y.shape[1]
        x_mask = make_pad_mask(x_lens, S)  # (B, S) True = padding
        y_mask = make_pad_mask(y_lens, T)  # (B, T)
        codes = y.long().masked_fill(y_mask[..., None], 0)  # garbage in padded frames must not leak

        # Stream 0 with EOS on padded frames and after the last frame: seq (B, T + 1).
        seq = F.pad(codes[..., 0], (0, 1), value=0) + self.eos_id * F.pad(
            y_mask.long(), (0, 1), value=1
        )
        ar_input = seq[:, :T]  # (B, T): first frame is input only; padded frames are EOS
        frames = y_lens.sum().float()
        metrics: dict[str, torch.Tensor] = {}
        losses = []

        if train_stage in (0, 1):
            ar_loss, ar_correct = self._ar_loss(x, x_mask, seq, y_mask, frames)
            losses.append(ar_loss)
            metrics.update(ar_loss=ar_loss.detach(), ar_top10_correct=ar_correct, ar_frames=frames)

        if self.num_quantizers > 1 and train_stage in (0, 2):
            if nar_stage is None:
                nar_stage = self._draw_nar_stage(generator)
            assert 1 <= nar_stage < self.num_quantizers, f"nar_stage {nar_stage} out of range"
            if self.prefix_mode == 4:
                check_mode4_prompt(nar_prompt_codes, y.shape[0], self.num_quantizers)
            nar_loss, nar_correct = self._nar_loss(
                x, x_mask, ar_input, codes, y_lens, y_mask, nar_stage, generator, nar_prompt_codes
            )
            losses.append(nar_loss)
            metrics.update(
                nar_loss=nar_loss.detach(),
                nar_top10_correct=nar_correct,
                nar_frames=frames,
                nar_stage=torch.tensor(float(nar_stage)),
            )

        # Amphion halves AR + NAR in train_stage 0 (we only halve when both actually ran).
        loss = losses[0] if len(losses) == 1 else (losses[0] + losses[1]) / 2.0
        return loss, metrics

    def _ar_loss(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        seq: torch.Tensor,
        y_mask: torch.Tensor,
        frames: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T = y_mask.shape[1]
        if self.prepend_bos:
            ar_input = F.pad(seq[:, :T], (1, 0), value=self.bos_id)  # (B, T + 1)
            targets = seq  # (B, T + 1)
            audio_padding = F.pad(y_mask, (1, 0), value=False)
        else:
            ar_input, targets, audio_padding = seq[:, :T], seq[:, 1:], y_mask
        logits = self._ar_logits(x, x_mask, ar_input, audio_padding)  # (B, T', V + 1)

        if self.ar_loss_ignore_padding:
            # Corrected: only the y_lens code targets (+ the final EOS) of each row count.
            valid_targets = F.pad(~y_mask, (int(self.prepend_bos), 0), value=True)
            targets = targets.masked_fill(~valid_targets, -100)
        # Amphion: no ignore_index, so the padded frames (target EOS) count too.
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
        correct = self._top10_accuracy(logits, targets, ignore=(self.eos_id, -100)) * frames
        return loss, correct

    def _ar_logits(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        ar_input: torch.Tensor,
        audio_padding: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced AR logits: x (B, S), ar_input (B, A) -> (B, A, V + 1)."""
        text = self.ar_text_position(self.ar_text_prenet(self.ar_text_embedding(x)))
        audio = self.ar_audio_position(self.ar_audio_prenet(self.ar_audio_embedding(ar_input)))
        S, A = text.shape[1], audio.shape[1]
        mask = ar_attention_mask(S, A, torch.cat([x_mask, audio_padding], dim=1))
        h = self.ar_decoder(torch.cat([text, audio], dim=1), attn_mask=mask)  # (B, S + A, D)
        return self.ar_predict_layer(h[:, S:])

    @torch.no_grad()
    def _top10_accuracy(
        self, logits: torch.Tensor, targets: torch.Tensor, ignore: tuple[int, ...]
    ) -> torch.Tensor:
        """Amphion's top-10 micro accuracy over targets not in ``ignore`` (0 if none)."""
        keep = torch.ones_like(targets, dtype=torch.bool)
        for value in ignore:
            keep &= targets != value
        top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices  # (B, T, 10)
        hits = (top10 == targets[..., None]).any(-1) & keep
        return (hits.sum().float() / keep.sum().clamp(min=1).float()).detach()

    def _draw_nar_stage(self, generator: torch.Generator | None) -> int:
        if generator is not None:
            return int(torch.randint(1, self.num_quantizers, (1,), generator=generator))
        n = self.num_quantizers - 1
        return self.rng.choices(range(1, self.num_quantizers), weights=[1.0 / n] * n, k=1)[0]

    def _draw_span_starts(
        self, y_lens: torch.Tensor, prefix_len: int, generator: torch.Generator | None
    ) -> list[int]:
        """prefix_mode 2: start of each row's prompt span, uniform in [0, y_lens[b] - prefix_len]
        (both ends included), drawn row by row from ``generator``, else ``self.rng`` (Amphion)."""
        starts = []
        for length in y_lens.tolist():
            high = int(length) - prefix_len
            if generator is not None:
                starts.append(int(torch.randint(0, high + 1, (1,), generator=generator)))
            else:
                starts.append(self.rng.randint(0, high))
        return starts

    def _nar_loss(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        ar_input: torch.Tensor,
        codes: torch.Tensor,
        y_lens: torch.Tensor,
        y_mask: torch.Tensor,
        stage: int,
        generator: torch.Generator | None,
        nar_prompt_codes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """NAR stage ``stage`` loss: predict stream ``stage`` from the streams below it."""
        B, T, Q = codes.shape
        E = self.nar_audio_embeddings
        targets = codes[..., stage] + self.audio_token_num * y_mask.long()  # V = ignored

        def below_stage(first: int, last: int) -> torch.Tensor:
            """emb0(stream 0) + ... + emb_{stage-1}(c_{stage-1}) on frames [first, last)."""
            emb = E[0](ar_input[:, first:last])
            for j in range(1, stage):
                emb = emb + E[j](codes[:, first:last, j])
            return emb

        def all_streams(prompt: torch.Tensor) -> torch.Tensor:
            """Prompt frames see every stream: (B, P, Q) -> (B, P, D)."""
            emb = E[0](prompt[..., 0])
            for j in range(1, Q):
                emb = emb + E[j](prompt[..., j])
            return emb

        audio_padding = y_mask
        prefix_len, loss_prefix = 0, 0
        if self.prefix_mode == 0:
            audio = below_stage(0, T)
        elif self.prefix_mode == 1:
            # Prompt = the first prefix_len frames of the same utterance, all streams given.
            int_low = int((0.25 * y_lens.min()).long())
            if int_low == 0:
                # Amphion: torch.randint(0, 0) raises when min(y_lens) < 4. Use no prefix.
                prefix_len = 0
            else:
                prefix_len = int(torch.randint(int_low, 2 * int_low, size=(), generator=generator))
            prefix_len = loss_prefix = min(prefix_len, MAX_PROMPT_FRAMES)
            prompt = torch.cat([ar_input[:, :prefix_len, None], codes[:, :prefix_len, 1:]], -1)
            audio = torch.cat([all_streams(prompt), below_stage(prefix_len, T)], dim=1)
            targets = targets[:, prefix_len:]
        else:
            if self.prefix_mode == 2:
                # Prompt = a random span of the same utterance, copied in front; its frames are
                # not predicted. Amphion: NameError (NUM_AUDIO_TOKENS) here, and the decoder got
                # the padding mask without the prompt part; fixed as lifeiteng/vall-e has it.
                prefix_len = loss_prefix = min(MAX_PROMPT_FRAMES, int(0.25 * y_lens.min().item()))
                starts = self._draw_span_starts(y_lens, prefix_len, generator)
                spans, targets = [], targets.clone()
                for b, start in enumerate(starts):
                    spans.append(codes[b, start : start + prefix_len])
                    targets[b, start : start + prefix_len] = self.audio_token_num
                prompt = torch.stack(spans, dim=0)  # (B, P, Q)
            else:
                # Prompt = a chunk of another utterance of the same speaker, from the data
                # pipeline; every frame is predicted and Amphion scales the loss by 1.
                prompt = nar_prompt_codes.long()
                prefix_len = prompt.shape[1]
            audio = torch.cat([all_streams(prompt), below_stage(0, T)], dim=1)
            audio_padding = F.pad(y_mask, (prefix_len, 0), value=False)

        text = self.nar_text_position(self.nar_text_prenet(self.nar_text_embedding(x)))
        audio = self.nar_audio_position(self.nar_audio_prenet(audio))
        S = text.shape[1]
        key_ok = ~torch.cat([x_mask, audio_padding], dim=1)[:, None, None, :]  # (B, 1, 1, L)
        stage_embedding = self.nar_stage_embeddings[stage - 1].weight  # (1, D)
        h = self.nar_decoder(torch.cat([text, audio], dim=1), stage_embedding, key_ok)
        logits = self.nar_predict_layers[stage - 1](h[:, S + prefix_len :])  # (B, T - P?, V)

        total = y_lens.sum().float()
        loss = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=self.audio_token_num, reduction="sum"
        ) * (total / (total - loss_prefix * B))
        correct = self._top10_accuracy(logits, targets, ignore=(self.audio_token_num,)) * total
        return loss, correct

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        prompt_codes: torch.Tensor,
        prompt_lens: torch.Tensor,
        enroll_text_lens: torch.Tensor | None = None,
        *,
        top_k: int = 1,
        top_p: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        max_new_frames: torch.Tensor | int | None = None,
        min_new_frames: int = 1,
        continual: bool = False,
        use_kv_cache: bool = True,
        item_names: list[str] | None = None,
    ) -> GenerationResult:
        """Zero-shot TTS for a batch: AR stream 0 (sampled, KV-cached) then NAR streams 1..Q-1.

        text (B, S) right-padded = prompt text + target text phone ids (joined as Amphion does),
        text_lens (B,); prompt_codes (B, P, Q) right-padded audio prompt codes, prompt_lens (B,);
        enroll_text_lens (B,) = length of the prompt-text part (needed by prefix_mode 2 / 4,
        whose NAR sees only BOS + target text + EOS).

        Sampling: top_k (default 1 = greedy; <= 0: no top-k filter), top_p, temperature.
        generator: None (torch's global RNG), one generator shared by the batch, or a list of B
        generators: item b then draws only from generator[b], so its output depends only on its
        own inputs and generator, not on the batch it is in (stage 3 gives each utterance its
        own, models/tts/valle/inference.py). The NAR stages are greedy (no draws). A frame
        stops an item when the argmax OR the sample is EOS (Amphion's rule). max_new_frames caps
        each item (None: Amphion's 16 * text_len + 1 frames). Before min_new_frames frames, a
        stop decision is overruled (EOS masked out, re-decided) and a warning names the item;
        Amphion raised SyntaxError at the first frame instead.

        continual=True is Amphion's ``continual``: each prompt is a whole utterance, its first
        min(P/2, 225) frames are the acoustic prompt, stream 0 of the rest is kept and the NAR
        regenerates streams 1..Q-1 for it (no AR loop; the NAR sees the whole text in every
        prefix mode).

        use_kv_cache=False runs the reference loop that recomputes the whole sequence per frame.
        Items are decoded together with padding masks; finished items leave the batch.
        """
        B = text.shape[0]
        Q = self.num_quantizers
        assert text.ndim == 2 and text_lens.shape == (B,), (
            f"text {text.shape}, lens {text_lens.shape}"
        )
        assert (
            prompt_codes.ndim == 3 and prompt_codes.shape[0] == B and prompt_codes.shape[2] == Q
        ), f"prompt_codes must be (B={B}, P, Q={Q}), got {tuple(prompt_codes.shape)}"
        assert prompt_lens.shape == (B,), f"prompt_lens must be (B,), got {prompt_lens.shape}"
        assert bool((text_lens > 0).all()), "every item needs a non-empty text"
        assert bool((prompt_lens > 0).all()), "every item needs a non-empty audio prompt"
        item_names = item_names or [f"item {b}" for b in range(B)]
        assert len(item_names) == B, f"{len(item_names)} item_names for {B} items"
        device = text.device
        text_rows = [text[b, : int(text_lens[b])] for b in range(B)]
        prompt_rows = [prompt_codes[b, : int(prompt_lens[b])].long() for b in range(B)]

        if continual:
            splits = [min(int(len(p) * 0.5), MAX_PROMPT_FRAMES) for p in prompt_rows]
            assert all(0 < s < len(p) for s, p in zip(splits, prompt_rows, strict=True)), (
                "continual mode needs prompts of at least 2 frames"
            )
            stream0 = [p[s:, 0] for s, p in zip(splits, prompt_rows, strict=True)]
            prompt_rows = [p[:s] for s, p in zip(splits, prompt_rows, strict=True)]
            reasons, ar_steps = ["continual"] * B, 0
            nar_text = text_rows
        else:
            if max_new_frames is None:
                caps = 16 * text_lens.long() + 1  # Amphion: stop once len > 16 * text_len
            else:
                caps = torch.as_tensor(max_new_frames, dtype=torch.long).expand(B)
            stream0, reasons, ar_steps = self._ar_generate(
                text_rows,
                [p[:, 0] for p in prompt_rows],
                caps.tolist(),
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                generator=generator,
                min_new_frames=min_new_frames,
                use_kv_cache=use_kv_cache,
                item_names=item_names,
            )
            nar_text = text_rows
            if self.prefix_mode in (2, 4):
                if enroll_text_lens is None:
                    raise ValueError(
                        f"prefix_mode {self.prefix_mode} needs enroll_text_lens (the length of "
                        "the prompt text, with BOS/EOS) to strip the prompt text for the NAR"
                    )
                # BOS + target text + EOS: drop the prompt phones (Amphion's inference).
                nar_text = [
                    torch.cat([t[:1], t[int(n) - 1 :]])
                    for t, n in zip(text_rows, enroll_text_lens, strict=True)
                ]

        if Q == 1:
            codes = [s[:, None] for s in stream0]
        else:
            codes = self._nar_generate(nar_text, prompt_rows, stream0)
        return GenerationResult(
            codes=[c.to(device) for c in codes], stop_reasons=reasons, ar_steps=ar_steps
        )

    def _embed_text_rows(
        self, rows: list[torch.Tensor], nar: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed each text on its own (a conv prenet must not see another row's padding), then
        pad: -> (B, S_max, D) and padding mask (B, S_max)."""
        embedding, prenet, position = (
            (self.nar_text_embedding, self.nar_text_prenet, self.nar_text_position)
            if nar
            else (self.ar_text_embedding, self.ar_text_prenet, self.ar_text_position)
        )
        embedded = [position(prenet(embedding(t[None])))[0] for t in rows]
        lens = torch.tensor([len(t) for t in rows], device=rows[0].device)
        return pad_1d(embedded), make_pad_mask(lens)

    def _ar_generate(
        self,
        text_rows: list[torch.Tensor],
        prompt_rows: list[torch.Tensor],
        caps: list[int],
        *,
        top_k: int,
        top_p: float,
        temperature: float,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        min_new_frames: int,
        use_kv_cache: bool,
        item_names: list[str],
    ) -> tuple[list[torch.Tensor], list[str], int]:
        """Batched AR loop over stream 0. Returns generated frames per item, stop reasons, passes.

        Layout of every pass: [text padded to S_max ; audio]. For the cache, audio = prompt
        padded to P_max then one column per step; padded columns are hidden by the mask and the
        positional encoding uses each item's own frame index, so an item's numbers do not depend
        on what it is batched with.
        """
        B = len(text_rows)
        if self.prepend_bos:
            prompt_rows = [F.pad(p, (1, 0), value=self.bos_id) for p in prompt_rows]
        text_emb, text_pad = self._embed_text_rows(text_rows, nar=False)  # (B, S, D), (B, S)
        device = text_emb.device
        prompt_lens = torch.tensor([len(p) for p in prompt_rows], device=device)
        generated: list[list[int]] = [[] for _ in range(B)]
        reasons = [""] * B
        warned = [False] * B
        active = list(range(B))  # original indices of the items still decoding
        cache: KVCache | None = None
        key_ok: torch.Tensor | None = None  # cached path: (B_active, cache_len) visible keys
        ar_steps = 0
        new_frames = 0  # frames generated so far by every active item (they step together)

        def generators(rows: list[int]) -> torch.Generator | Sequence[torch.Generator] | None:
            """The generator(s) for these active rows (per-item generators follow their item)."""
            return (
                [generator[active[i]] for i in rows]
                if isinstance(generator, Sequence)
                else generator
            )

        def keep_rows(keep: list[int]) -> None:
            """Finished items leave the batch (and the KV cache)."""
            nonlocal active, key_ok
            active = [active[i] for i in keep]
            if cache is not None and active:
                rows = torch.tensor(keep, device=device)
                cache.select(rows)
                key_ok = key_ok[rows]

        while active:
            # Items at their cap stop without another pass.
            capped = [new_frames >= caps[b] for b in active]
            for b, is_capped in zip(active, capped, strict=True):
                if is_capped:
                    reasons[b] = "cap"
            if any(capped):
                keep_rows([i for i, c in enumerate(capped) if not c])
                if not active:
                    break
            rows = torch.tensor(active, device=device)

            if not use_kv_cache:
                audio = [torch.cat([prompt_rows[b], prompt_rows[b].new_tensor(generated[b])])
                         for b in active]  # fmt: skip
                logits = self._ar_full_pass(text_emb[rows], text_pad[rows], audio)
            elif cache is None:
                logits, cache, key_ok = self._ar_prefill(text_emb, text_pad, prompt_rows, max(caps))
            else:
                last = torch.tensor([generated[b][-1] for b in active], device=device)
                positions = prompt_lens[rows] + new_frames - 1  # audio position of `last`
                key_ok = F.pad(key_ok, (0, 1), value=True)
                logits = self._ar_step(last, positions, cache, key_ok)
            ar_steps += 1

            all_rows = list(range(len(active)))
            tokens, stop = self._decide(logits, top_k, top_p, temperature, generators(all_rows))
            early = stop & (new_frames < min_new_frames)
            if bool(early.any()):
                # Amphion raised SyntaxError here; we forbid EOS for this frame and warn. Only
                # the early rows decide again (and draw again, each from its own generator).
                redo = early.nonzero().flatten().tolist()
                for i in redo:
                    if not warned[active[i]]:
                        warned[active[i]] = True
                        logger.warning(
                            "%s: the AR model chose EOS after %d frame(s); EOS suppressed until "
                            "min_new_frames=%d",
                            item_names[active[i]],
                            new_frames,
                            min_new_frames,
                        )
                masked = logits[redo].clone()
                masked[:, self.eos_id] = float("-inf")
                tokens[redo], stop[redo] = self._decide(
                    masked, top_k, top_p, temperature, generators(redo)
                )

            stop_list, token_list = stop.tolist(), tokens.tolist()  # one host sync per step
            for b, stopped, token in zip(active, stop_list, token_list, strict=True):
                if stopped:
                    reasons[b] = "eos"
                else:
                    generated[b].append(token)
            new_frames += 1
            if any(stop_list):
                keep_rows([i for i, stopped in enumerate(stop_list) if not stopped])

        codes = [torch.tensor(g, dtype=torch.long, device=device) for g in generated]
        return codes, reasons, ar_steps

    def _decide(
        self,
        logits: torch.Tensor,
        top_k: int,
        top_p: float,
        temperature: float,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (B, V + 1) -> (sampled ids, stop) with Amphion's rule: stop if the argmax or
        the sample is EOS."""
        tokens = sample(logits, top_k, top_p, temperature, generator)
        stop = (logits.argmax(-1) == self.eos_id) | (tokens == self.eos_id)
        return tokens, stop

    def _ar_full_pass(
        self, text_emb: torch.Tensor, text_pad: torch.Tensor, audio_rows: list[torch.Tensor]
    ) -> torch.Tensor:
        """Reference path (Amphion): recompute [text ; audio] from scratch, return the logits
        (B, V + 1) at each row's last audio frame."""
        audio_lens = torch.tensor([len(a) for a in audio_rows], device=text_emb.device)
        audio = self.ar_audio_position(
            self.ar_audio_prenet(self.ar_audio_embedding(pad_1d(audio_rows)))
        )
        S, A = text_emb.shape[1], audio.shape[1]
        mask = ar_attention_mask(S, A, torch.cat([text_pad, make_pad_mask(audio_lens, A)], dim=1))
        h = self.ar_decoder(torch.cat([text_emb, audio], dim=1), attn_mask=mask)
        last = h[torch.arange(len(audio_rows)), S + audio_lens - 1]  # (B, D)
        return self.ar_predict_layer(last)

    def _ar_prefill(
        self,
        text_emb: torch.Tensor,
        text_pad: torch.Tensor,
        prompt_rows: list[torch.Tensor],
        max_new: int,
    ) -> tuple[torch.Tensor, KVCache, torch.Tensor]:
        """Encode text + prompt once into a fresh KV cache; logits (B, V + 1) of the first frame."""
        B, S, _ = text_emb.shape
        prompt_lens = torch.tensor([len(p) for p in prompt_rows], device=text_emb.device)
        audio = self.ar_audio_position(
            self.ar_audio_prenet(self.ar_audio_embedding(pad_1d(prompt_rows)))
        )
        P = audio.shape[1]
        padding = torch.cat([text_pad, make_pad_mask(prompt_lens, P)], dim=1)  # (B, S + P)
        # Room for 10 s of audio up front; the cache doubles when a long item needs more.
        capacity = S + P + min(max_new, 750)
        cache = self.ar_decoder.new_cache(capacity)
        h = self.ar_decoder(
            torch.cat([text_emb, audio], dim=1),
            attn_mask=ar_attention_mask(S, P, padding),
            cache=cache,
        )
        logits = self.ar_predict_layer(h[torch.arange(B), S + prompt_lens - 1])
        return logits, cache, ~padding

    def _ar_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, key_ok: torch.Tensor
    ) -> torch.Tensor:
        """Feed one frame per row (tokens (B,), audio positions (B,)); logits (B, V + 1)."""
        emb = self.ar_audio_prenet(self.ar_audio_embedding(tokens[:, None]))  # (B, 1, D)
        emb = self.ar_audio_position(emb, positions[:, None])
        h = self.ar_decoder(emb, attn_mask=key_ok[:, None, None, :], cache=cache)
        return self.ar_predict_layer(h[:, -1])

    def _nar_generate(
        self,
        text_rows: list[torch.Tensor],
        prompt_rows: list[torch.Tensor],
        stream0: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Batched NAR stages 1..Q-1 (greedy). Per item: audio = prompt frames (P_b) then
        generated frames (G_b), positions from 0; returns (G_b, Q) codes per item."""
        B, Q = len(text_rows), self.num_quantizers
        E = self.nar_audio_embeddings
        text_emb, text_pad = self._embed_text_rows(text_rows, nar=True)
        S = text_emb.shape[1]
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
        if self.prefix_mode != 0:
            # Prompt frames get all their streams up front (like the training prefix).
            for j in range(1, Q):
                emb = torch.where(is_prompt, emb + E[j](prompt_grid[..., j]), emb)

        out = [stream0_grid]
        for stage in range(1, Q):
            audio = self.nar_audio_position(self.nar_audio_prenet(emb))
            stage_embedding = self.nar_stage_embeddings[stage - 1].weight
            h = self.nar_decoder(torch.cat([text_emb, audio], dim=1), stage_embedding, key_ok)
            predicted = self.nar_predict_layers[stage - 1](h[:, S:]).argmax(-1)  # (B, A)
            out.append(predicted)
            if stage < Q - 1:
                emb = torch.where(is_new, emb + E[stage](predicted), emb)
                if self.prefix_mode == 0:
                    # Prompt streams are added one stage at a time, like the training input.
                    emb = torch.where(is_prompt, emb + E[stage](prompt_grid[..., stage]), emb)
        grid = torch.stack(out, dim=-1)  # (B, A, Q)
        return [grid[b, int(P[b]) : int(P[b] + G[b])] for b in range(B)]

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

        Same signature and defaults as Amphion's ``VALLE.inference``: top_k = -100 means no
        top-k filter (sampling from the whole distribution, torch's global RNG). ``generate``
        (default top_k = 1, greedy) and stage 3 (``inference.top_k``, default 100) have their
        own defaults; README "Decoding defaults" says which applies where.
        """
        assert x.shape[0] == 1 and y.shape[0] == 1, "inference() is batch 1; use generate()"
        result = self.generate(
            x,
            x_lens,
            y,
            torch.tensor([y.shape[1]], device=y.device),
            enroll_x_lens,
            top_k=top_k,
            temperature=temperature,
        )
        return result.codes[0][None]
