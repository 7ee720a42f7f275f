"""Training data of VALL-E: stage-1 CutSets -> padded batches, with a resumable, seeded sampler.

A batch is a dict (what the trainer feeds to `VALLE.forward`):

    x        (B, S) int64  `<bos> phones <eos>` ids (TextTokenizer), right-padded with `<pad>` = 0
    x_lens   (B,)   int64
    y        (B, T, Q) int64 codec codes, right-padded with 0 (the model masks padded frames)
    y_lens   (B,)   int64
    cut_ids  list[str]     to name the utterances in errors (e.g. the non-finite loss guard)
    nar_prompts (B, P, Q) int64, only for model.prefix_mode 4: row b is a chunk of another
             utterance of cut b's speaker (`SpeakerPrompts`), the NAR's acoustic prompt

Sampling, exact mid-epoch resume and the data loader are the engine's
(`models/base/train_data.py`); this file makes VALL-E's cuts and batches.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from lhotse import CutSet, combine
from lhotse.cut import Cut
from lhotse.dataset.collation import collate_matrices, collate_vectors

from models.base.train_data import (
    DataError,
    ResumableBatches,
    codes_of,
    hop_seconds,
    make_loader,
    make_sampler,
    num_frames,
)
from models.codec.encodec import SAMPLE_RATE, codec_span
from text.symbol_table import TextTokenizer, UnknownPhoneError
from utils.config import Config

logger = logging.getLogger(__name__)


def stage1_cuts_path(cfg: Config, processed_dir: Path, dataset: str, split: str) -> Path:
    """`<processed_dir>/<dataset>/cuts_<stem>.jsonl.gz`; the stem of `preprocess.train_file` /
    `valid_file` names the split (Amphion keys, as stage 1 writes them)."""
    stem = Path(getattr(cfg.preprocess, f"{split}_file")).stem
    return processed_dir / dataset / f"cuts_{stem}.jsonl.gz"


def load_cuts(cfg: Config, processed_dir: Path, split: str) -> CutSet:
    """The `split` ("train" / "valid") cuts of every corpus in `cfg.dataset`, in config order.

    Every corpus must have train cuts; a corpus without valid cuts is skipped with a warning
    (stage 1 writes none when it has no valid subset / valid_fraction), as long as one has some."""
    sets, missing = [], []
    for dataset in cfg.dataset:
        path = stage1_cuts_path(cfg, processed_dir, dataset, split)
        if path.is_file():
            cuts = span_old_cuts(CutSet.from_file(path), path)
            if split == "train" or len(cuts):
                sets.append(cuts)
                continue
        elif split == "train":
            raise DataError(
                f"stage-1 output missing: {path} does not exist. Run the data stage first: "
                "sh egs/tts/VALLE/run.sh --stage 1 (same --config), or fix "
                "preprocess.processed_dir / dataset in the config."
            )
        missing.append(str(path))
    if not sets:
        raise DataError(
            f"no {split} cuts: {', '.join(missing)} missing or empty. Give stage 1 a validation "
            "subset (libritts_valid_subsets) or preprocess.valid_fraction > 0 and rerun it."
        )
    if missing:
        logger.warning("no %s cuts in %s; using the other corpora's", split, ", ".join(missing))
    return sets[0] if len(sets) == 1 else combine(*sets)


def _predates_codec_span(cut: Cut) -> bool:
    """A whole-recording cut of a stage-1 run before MANIFEST_FORMAT 2: its duration is the
    audio's, so lhotse would leave out a last codec frame covering under half a hop."""
    codes = codes_of(cut)
    return (
        codes is not None
        and cut.has_recording
        and cut.start == 0
        and codes.start == 0
        and math.isclose(cut.duration, cut.recording.duration)
        # audio resampled to 24 kHz may hold one sample more than recording.duration says
        and 1e-9 < codes.duration - cut.duration <= codes.frame_shift + 1 / SAMPLE_RATE
    )


def span_old_cuts(cuts: CutSet, path: Path) -> CutSet:
    """Cuts written by an older stage 1 converted on read (`encodec.codec_span`), with a
    warning; cuts of the current format come back unchanged."""
    old = sum(map(_predates_codec_span, cuts))
    if not old:
        return cuts
    logger.warning(
        "%s: %d cuts come from an older stage 1 (duration shorter than their codes); converted "
        "on read so that training sees every codec frame. Rerun stage 1 to rewrite them.",
        path,
        old,
    )
    return CutSet.from_cuts(codec_span(c) if _predates_codec_span(c) else c for c in cuts)


def audio_seconds(cut: Cut) -> float:
    """Audio length of a cut: a stage-1 cut's duration also covers its last codec frame's
    padding (up to one hop past the recording's end)."""
    end = cut.start + cut.duration  # not cut.end: it needs a sampling rate (a recording)
    if cut.has_recording:
        end = min(end, cut.recording.duration)
    return end - cut.start


def filter_cuts(
    cuts: CutSet, cfg: Config, *, min_duration: float, max_duration: float
) -> tuple[CutSet, list[tuple[str, str]]]:
    """Keep cuts within the duration limits (and short enough for one dynamic batch).

    Returns the kept cuts (eager) and (cut id, reason) for each left-out one, so that the caller
    can report them (nothing is dropped silently)."""
    hop = hop_seconds(cfg)
    kept, rejected = [], []
    for cut in cuts:
        seconds = audio_seconds(cut)
        if seconds < min_duration or seconds > max_duration:
            reason = f"duration {seconds:.2f}s outside [{min_duration}, {max_duration}]"
            rejected.append((cut.id, reason))
        elif not cut.custom or "phones" not in cut.custom or not cut.has_custom("codes"):
            rejected.append((cut.id, "no custom['phones'] or codes (not a stage-1 cut)"))
        elif cfg.train.use_dynamic_batchsize and num_frames(cut, hop) > cfg.train.max_tokens:
            rejected.append((cut.id, f"longer than train.max_tokens={cfg.train.max_tokens} frames"))
        else:
            kept.append(cut)
    return CutSet.from_cuts(kept), rejected


def check_phones(cuts: CutSet, tokenizer: TextTokenizer) -> None:
    """Fail before training when a cut has a phone the table lacks (naming cut and phone)."""
    for cut in cuts:
        unknown = tokenizer.unknown_phones(cut.custom["phones"])
        if unknown:
            raise DataError(
                f"cut {cut.id}: phones {unknown} are not in {tokenizer.source}; the cuts and the "
                "symbol table come from different stage-1 runs - rerun stage 1"
            )


class SpeakerPrompts:
    """prefix_mode 4 prompts: each utterance is prompted by a chunk of another utterance of the
    same speaker (Amphion's design, its `PromptedPrecomputedFeatures` from lifeiteng/vall-e).

    - Source: the previous or the next utterance of the same speaker (cut ids sorted within the
      speaker, so LibriTTS neighbours are usually the same chapter), one of the two at random.
    - Length: all prompts of a batch have P = min(`max_frames`, shortest source) frames
      (`train.nar_prompt_seconds`, 3 s like Amphion), each at a random offset in its source.
    - A speaker with a single utterance (or a cut without a speaker label) has no other
      utterance: its own utterance is the source (Amphion does the same). Those cuts are counted
      and logged once; the NAR then sees part of its own target in the prompt.
    - Draws are seeded by (`seed`, epoch, cut id) alone, so a resumed run (same batches) and
      every dataloader worker get the same prompts; `set_epoch` gives each epoch new ones.
    """

    def __init__(self, cuts: CutSet, max_frames: int, seed: int):
        assert max_frames >= 1, f"max_frames must be >= 1, got {max_frames}"
        self.max_frames, self.seed, self.epoch = max_frames, seed, 0
        self.cuts = {cut.id: cut for cut in cuts}
        by_speaker: dict[str, list[str]] = {}
        for cut in self.cuts.values():
            speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
            by_speaker.setdefault(speaker or f"<no speaker: {cut.id}>", []).append(cut.id)
        self.sources: dict[str, list[str]] = {}
        for ids in by_speaker.values():
            ids.sort()
            for i, cut_id in enumerate(ids):
                self.sources[cut_id] = [ids[j] for j in (i - 1, i + 1) if 0 <= j < len(ids)]
        self.self_prompted = sorted(c for c, s in self.sources.items() if not s)
        if self.self_prompted:
            logger.warning(
                "prefix_mode 4: %d of %d cuts are their speaker's only utterance (or have no "
                "speaker label) and are prompted by a chunk of themselves (e.g. %s)",
                len(self.self_prompted), len(self.cuts), ", ".join(self.self_prompted[:3]),
            )  # fmt: skip

    def __call__(
        self, cuts: list[Cut], codes: list[torch.Tensor], load: Callable[[Cut], torch.Tensor]
    ) -> torch.Tensor:
        """Prompts (B, P, Q) for the batch `cuts` (their codes given; `load(cut)` -> codes)."""
        rngs = [random.Random(f"{self.seed}:{self.epoch}:{cut.id}") for cut in cuts]
        chunks = []
        for cut, own, rng in zip(cuts, codes, rngs, strict=True):
            sources = self.sources.get(cut.id)
            if sources is None:
                raise DataError(f"cut {cut.id}: not among the cuts the prompts were built from")
            chunks.append(load(self.cuts[rng.choice(sources)]) if sources else own)
        frames = min(self.max_frames, *(len(c) for c in chunks))
        starts = [rng.randint(0, len(c) - frames) for c, rng in zip(chunks, rngs, strict=True)]
        return torch.stack([c[s : s + frames] for c, s in zip(chunks, starts, strict=True)])


class VALLEDataset(torch.utils.data.Dataset):
    """Map-style lhotse dataset: `dataset[cutset]` -> one padded batch (see module docstring).

    `prompts` (model.prefix_mode 4 only) adds `nar_prompts` to each batch."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        num_quantizers: int = 8,
        prompts: SpeakerPrompts | None = None,
    ):
        self.tokenizer = tokenizer
        self.num_quantizers = num_quantizers
        self.prompts = prompts

    def set_epoch(self, epoch: int) -> None:
        """New prompt draws per epoch (the sampler reshuffles on its own)."""
        if self.prompts is not None:
            self.prompts.epoch = epoch

    def load_codes(self, cut: Cut) -> torch.Tensor:
        """(frames, num_quantizers) int64 codes of a cut."""
        # a stage-1 cut's duration spans all its ceil(samples / hop) codec frames
        c = torch.as_tensor(cut.load_codes()).long()  # (frames, 8)
        if c.ndim != 2 or c.shape[1] < self.num_quantizers:
            raise DataError(
                f"cut {cut.id}: codes of shape {tuple(c.shape)}, expected (frames, >= "
                f"{self.num_quantizers}) - stage 1 used another codec setting"
            )
        return c[:, : self.num_quantizers]

    def __getitem__(self, cuts: CutSet) -> dict:
        texts, codes, ids = [], [], []
        cuts = list(cuts)
        for cut in cuts:
            try:
                texts.append(torch.tensor(self.tokenizer.encode(cut.custom["phones"])))
            except UnknownPhoneError as e:
                raise DataError(f"cut {cut.id}: {e}") from None
            codes.append(self.load_codes(cut))
            ids.append(cut.id)
        x_lens = torch.tensor([len(t) for t in texts], dtype=torch.long)
        y_lens = torch.tensor([len(c) for c in codes], dtype=torch.long)
        x = collate_vectors(texts, padding_value=self.tokenizer.pad_id)  # (B, S)
        y = collate_matrices(codes, padding_value=0)  # (B, T, Q)
        batch = {"x": x, "x_lens": x_lens, "y": y, "y_lens": y_lens, "cut_ids": ids}
        if self.prompts is not None:
            batch["nar_prompts"] = self.prompts(cuts, codes, self.load_codes)  # (B, P, Q)
        return batch


def make_dataloader(
    cuts: CutSet,
    cfg: Config,
    tokenizer: TextTokenizer,
    *,
    shuffle: bool,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    name: str = "",
) -> tuple[torch.utils.data.DataLoader, ResumableBatches]:
    """The loader of `cuts` (VALL-E batches) and its resumable sampler."""
    batches = ResumableBatches(
        make_sampler(cuts, cfg, shuffle=shuffle, world_size=world_size, rank=rank, name=name)
    )
    prompts = None
    if cfg.model.prefix_mode == 4:
        pre = cfg.preprocess
        frames = max(1, round(cfg.train.nar_prompt_seconds * pre.sample_rate / pre.codec_hop_size))
        prompts = SpeakerPrompts(cuts, frames, cfg.train.random_seed)
    dataset = VALLEDataset(tokenizer, cfg.model.num_quantizers, prompts)
    return make_loader(dataset, batches, num_workers), batches
