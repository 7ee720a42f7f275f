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
from dataclasses import dataclass
from pathlib import Path

import torch
from lhotse import CutSet, combine
from lhotse.cut import Cut
from lhotse.dataset.collation import collate_matrices, collate_vectors

from models.base.train_data import (
    DataError,
    EpochShards,
    ResumableBatches,
    SplitData,
    codes_of,
    hop_seconds,
    make_loader,
    make_sampler,
    num_frames,
)
from models.codec.encodec import SAMPLE_RATE, codec_span
from text.symbol_table import TextTokenizer, UnknownPhoneError
from utils.config import Config
from utils.cut_shards import audio_seconds, index_path, read_cuts, read_index, single_manifest

logger = logging.getLogger(__name__)


@dataclass
class VALLESplit(SplitData):
    """A split of VALL-E's stage-1 output; `phones` (lazy splits): phone -> first cut using it,
    from the index, so that `check_phones` need not read the cuts."""

    phones: dict[str, str] | None = None
    where: str = ""  # the folder(s) it comes from, for messages
    audio_range: tuple[float, float] = (0.0, math.inf)  # shortest, longest audio (lazy: index)


def split_stem(cfg: Config, split: str) -> str:
    """The stem of `preprocess.train_file` / `valid_file` names the split (Amphion keys, as
    stage 1 writes them)."""
    return Path(getattr(cfg.preprocess, f"{split}_file")).stem


def _read_layouts(cfg: Config, processed_dir: Path, split: str) -> list:
    """(dataset dir, SplitIndex or None for the one-file layout) per corpus that has the split;
    a corpus without train cuts is an error."""
    stem, found = split_stem(cfg, split), []
    for dataset in cfg.dataset:
        work = processed_dir / dataset
        try:
            index = read_index(work, stem)
        except ValueError as e:
            raise DataError(str(e)) from None
        if index is not None or single_manifest(work, stem).is_file():
            found.append((work, index))
        elif split == "train":
            raise DataError(
                f"stage-1 output missing: neither {index_path(work, stem)} nor "
                f"{single_manifest(work, stem)} exists. Run the data stage first: "
                "sh egs/tts/VALLE/run.sh --stage 1 (same --config), or fix "
                "preprocess.processed_dir / dataset in the config."
            )
    return found


def load_split(cfg: Config, processed_dir: Path, split: str) -> VALLESplit:
    """The `split` ("train" / "valid") of every corpus in `cfg.dataset`, in config order.

    Lazy when every corpus has the per-shard layout with an index (stage 1 MANIFEST_FORMAT 3,
    utils/cut_shards.py): nothing is read but the indexes. Eager (as before) when one has the
    one-file layout of earlier stage-1 runs. Every corpus must have train cuts; a corpus
    without valid cuts is skipped with a warning, as long as one has some."""
    found = _read_layouts(cfg, processed_dir, split)
    found = [(w, i) for w, i in found if i is None or i.num_cuts or split == "train"]
    names = {str(w) for w, _ in found}
    missing = [d for d in cfg.dataset if str(processed_dir / d) not in names]
    if not found:
        raise DataError(
            f"no {split} cuts in {processed_dir} ({', '.join(missing)}): missing or empty. Give "
            "stage 1 a validation subset (libritts_valid_subsets) or preprocess.valid_fraction "
            "> 0 and rerun it."
        )
    if missing:
        logger.warning("no %s cuts in %s; using the other corpora's", split, ", ".join(missing))
    where = ", ".join(str(w) for w, _ in found)
    if all(index is not None for _, index in found):
        return _lazy_split([index for _, index in found], cfg, where)
    stem = split_stem(cfg, split)
    sets = [span_old_cuts(read_cuts(w, stem), single_manifest(w, stem)) for w, _ in found]
    cuts = sets[0] if len(sets) == 1 else combine(*sets).to_eager()
    return VALLESplit(**vars(SplitData.eager(cuts, cfg)), where=where)


def _lazy_split(indexes: list, cfg: Config, where: str) -> VALLESplit:
    """A lazy split over the shard manifests of `indexes` (utils.cut_shards.SplitIndex)."""
    shards = EpochShards([m for index in indexes for m in index.manifests])
    phones: dict[str, str] = {}
    for index in indexes:
        phones = {**index.phones, **phones}  # the first corpus's cut names a phone
    hop, ranges = hop_seconds(cfg), [i.audio_range for i in indexes]
    return VALLESplit(
        cuts=CutSet(shards),
        num_cuts=sum(i.num_cuts for i in indexes),
        frames=sum(i.frames for i in indexes),
        longest=sorted((c for i in indexes for c in i.longest), key=lambda c: -num_frames(c, hop)),
        durations=sorted(d for i in indexes for d in i.durations),
        shards=shards,
        phones=phones,
        where=where,
        audio_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)),
    )


def load_cuts(cfg: Config, processed_dir: Path, split: str) -> CutSet:
    """The split's cuts (lazy or eager, see `load_split`)."""
    return load_split(cfg, processed_dir, split).cuts


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


def left_out_reason(cut: Cut, cfg: Config, min_duration: float, max_duration: float) -> str:
    """Why training leaves the cut out ("" when it keeps it)."""
    seconds = audio_seconds(cut)
    if seconds < min_duration or seconds > max_duration:
        return f"duration {seconds:.2f}s outside [{min_duration}, {max_duration}]"
    if not cut.custom or "phones" not in cut.custom or not cut.has_custom("codes"):
        return "no custom['phones'] or codes (not a stage-1 cut)"
    if cfg.train.use_dynamic_batchsize and num_frames(cut, hop_seconds(cfg)) > cfg.train.max_tokens:
        return f"longer than train.max_tokens={cfg.train.max_tokens} frames"
    return ""


def filter_cuts(
    cuts: CutSet, cfg: Config, *, min_duration: float, max_duration: float
) -> tuple[CutSet, list[tuple[str, str]]]:
    """Keep cuts within the duration limits (and short enough for one dynamic batch).

    Returns the kept cuts (eager) and (cut id, reason) for each left-out one, so that the caller
    can report them (nothing is dropped silently)."""
    kept, rejected = [], []
    for cut in cuts:
        if reason := left_out_reason(cut, cfg, min_duration, max_duration):
            rejected.append((cut.id, reason))
        else:
            kept.append(cut)
    return CutSet.from_cuts(kept), rejected


class LazyKeep:
    """`left_out_reason` as a lazy filter predicate: each left-out cut is logged when the
    sampler meets it (the first 5, then at 10, 100, 1000, ... with the running count)."""

    def __init__(self, cfg: Config, min_duration: float, max_duration: float, split: str):
        self.cfg, self.limits, self.split, self.left_out = (
            cfg,
            (min_duration, max_duration),
            split,
            0,
        )

    def __call__(self, cut: Cut) -> bool:
        reason = left_out_reason(cut, self.cfg, *self.limits)
        if reason:
            self.left_out += 1
            n = self.left_out
            if n <= 5 or math.log10(n).is_integer():
                logger.warning("%s: left out cut %s (%s); %d cut(s) left out so far", self.split,
                               cut.id, reason, n)  # fmt: skip
        return not reason


def filter_split(
    data: VALLESplit, cfg: Config, split: str, *, min_duration: float, max_duration: float
) -> tuple[VALLESplit, list[tuple[str, str]]]:
    """`filter_cuts` for a split: eager -> the kept cuts and every left-out one; lazy -> the
    filter applied lazily (`LazyKeep` reports what it leaves out), and the left-out cuts the
    index proves: all of them when no cut's audio length is within the limits."""
    if data.shards is None:
        kept, rejected = filter_cuts(data.cuts, cfg, min_duration=min_duration,
                                     max_duration=max_duration)  # fmt: skip
        return VALLESplit(**{**vars(SplitData.eager(kept, cfg)), "where": data.where}), rejected
    keep = LazyKeep(cfg, min_duration, max_duration, split)
    longest = [c for c in data.longest if not left_out_reason(c, cfg, min_duration, max_duration)]
    shortest, longest_seconds = data.audio_range
    rejected = []
    if longest_seconds < min_duration or shortest > max_duration:
        reason = f"duration outside [{min_duration}, {max_duration}] (index of {data.where})"
        rejected = [("*", reason)] * data.num_cuts
    filtered = {"cuts": data.cuts.filter(keep), "longest": longest, "num_cuts": data.num_cuts}
    return VALLESplit(**{**vars(data), **filtered}), rejected


def check_phones(cuts: CutSet | VALLESplit, tokenizer: TextTokenizer) -> None:
    """Fail before training when a cut has a phone the table lacks (naming cut and phone); a
    lazy split is checked from its index (every phone of the split, with its first cut)."""
    if isinstance(cuts, VALLESplit) and cuts.phones is not None:
        for phone, cut_id in cuts.phones.items():
            if unknown := tokenizer.unknown_phones([phone]):
                _unknown_phone(cut_id, unknown, tokenizer)
        return
    for cut in cuts.cuts if isinstance(cuts, VALLESplit) else cuts:
        if unknown := tokenizer.unknown_phones(cut.custom["phones"]):
            _unknown_phone(cut.id, unknown, tokenizer)


def _unknown_phone(cut_id: str, unknown: list, tokenizer: TextTokenizer):
    raise DataError(
        f"cut {cut_id}: phones {unknown} are not in {tokenizer.source}; the cuts and the "
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
    cuts: CutSet | VALLESplit,
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
    shards = cuts.shards if isinstance(cuts, SplitData) else None
    batches = ResumableBatches(
        make_sampler(cuts, cfg, shuffle=shuffle, world_size=world_size, rank=rank, name=name),
        shards,
    )
    prompts = None
    if cfg.model.prefix_mode == 4:
        pre = cfg.preprocess
        frames = max(1, round(cfg.train.nar_prompt_seconds * pre.sample_rate / pre.codec_hop_size))
        # a full pass over the split (see SpeakerPrompts): the one start-up scan left
        source = cuts.cuts if isinstance(cuts, SplitData) else cuts
        prompts = SpeakerPrompts(source, frames, cfg.train.random_seed)
    dataset = VALLEDataset(tokenizer, cfg.model.num_quantizers, prompts)
    return make_loader(dataset, batches, num_workers), batches
