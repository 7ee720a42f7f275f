"""The stage-1 manifest layout: one lhotse manifest per shard plus a small per-split index.

Stage 1 (preprocessors/pipeline.py) writes, for each split stem (`train`, `valid`, `test`):

    <dataset>/cuts_<stem>.000003.jsonl.gz   the split's cuts of shard 3 (a plain lhotse
                                            CutSet; its codes live in that shard's h5 file)
    <dataset>/cuts_<stem>.index.json        INDEX_FORMAT: the manifests, number of cuts, total
                                            duration / codec frames, the longest cuts (OOM
                                            pre-check), a duration sample (bucket bins), the
                                            phones used (first cut of each)

The index is written last, so a split without one is incomplete. Training opens the manifests
lazily (`CutSet.from_jsonl_lazy`) and takes everything it would otherwise count from the index.
The layout before (MANIFEST_FORMAT <= 2) is one eager `cuts_<stem>.jsonl.gz` per split.
Stage 1 and training both import this module (it sits below both layers).
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet
from lhotse.array import TemporalArray, seconds_to_frames
from lhotse.cut import Cut

from utils.fileio import atomic_path, atomic_write_text

INDEX_FORMAT = "codectts-cuts-index-1"
LONGEST_KEPT = 256  # cuts kept in the index for the largest-batch check
DURATION_SAMPLE = 10000  # durations kept in the index to estimate duration buckets
# gzip level of the manifests: 1 writes ~5x faster than lhotse's 9 (files ~1/4 larger); reading
# is as fast (a re-merge of a million cuts rewrites every manifest)
GZIP_LEVEL = 1


def single_manifest(dataset_dir: Path, stem: str) -> Path:
    """The one-file layout of MANIFEST_FORMAT <= 2."""
    return dataset_dir / f"cuts_{stem}.jsonl.gz"


def index_path(dataset_dir: Path, stem: str) -> Path:
    return dataset_dir / f"cuts_{stem}.index.json"


def shard_manifest(dataset_dir: Path, stem: str, shard: int) -> Path:
    return dataset_dir / f"cuts_{stem}.{shard:06d}.jsonl.gz"


def code_frames(cut: Cut) -> int | None:
    """Codec frames `cut.load_codes()` returns (lhotse's count from the duration), None when
    the cut has no codes (`cut.custom["codes"]`)."""
    codes = cut.custom.get("codes") if cut.custom else None
    if not isinstance(codes, TemporalArray):
        return None
    return seconds_to_frames(cut.duration, codes.frame_shift, max_index=codes.num_frames)


def audio_seconds(cut: Cut) -> float:
    """Audio length of a cut: a stage-1 cut's duration also covers its last codec frame's
    padding (up to one hop past the recording's end)."""
    end = cut.start + cut.duration  # not cut.end: it needs a sampling rate (a recording)
    if cut.has_recording:
        end = min(end, cut.recording.duration)
    return end - cut.start


@dataclass
class SplitIndex:
    """A split's index (see module docstring); `manifests` are absolute paths."""

    path: Path
    num_cuts: int
    duration: float
    frames: int
    manifests: list[Path]
    longest: list[Cut]  # the LONGEST_KEPT longest cuts (by frames), longest first
    durations: list[float]  # sorted sample of cut durations
    audio_range: tuple[float, float]  # shortest and longest audio_seconds
    phones: dict[str, str]  # phone -> id of the first cut that uses it


class _Stats:
    """The index's figures, gathered cut by cut (the cuts themselves are not kept)."""

    def __init__(self):
        self.num_cuts, self.duration, self.frames = 0, 0.0, 0
        self.longest: list[tuple[int, str, dict]] = []  # min-heap of (frames, id, cut dict)
        self.durations: list[float] = []
        self.seconds = [math.inf, 0.0]
        self.phones: dict[str, str] = {}

    def add(self, cut: Cut) -> None:
        frames = code_frames(cut) or 0
        self.num_cuts, self.duration, self.frames = (
            self.num_cuts + 1, self.duration + cut.duration, self.frames + frames
        )  # fmt: skip
        item = (frames, _Desc(cut.id), cut)
        if len(self.longest) < LONGEST_KEPT:
            heapq.heappush(self.longest, item)
        elif item[:2] > self.longest[0][:2]:
            heapq.heapreplace(self.longest, item)
        self.durations.append(cut.duration)
        seconds = audio_seconds(cut)
        self.seconds = [min(self.seconds[0], seconds), max(self.seconds[1], seconds)]
        for p in (cut.custom or {}).get("phones", []):
            if p not in self.phones or cut.id < self.phones[p]:
                self.phones[p] = cut.id

    def index(self, manifests: list[dict]) -> dict:
        durations = sorted(self.durations)
        step = max(1, math.ceil(len(durations) / DURATION_SAMPLE))
        longest = sorted(self.longest, key=lambda t: t[:2], reverse=True)
        return {
            "format": INDEX_FORMAT,
            "num_cuts": self.num_cuts,
            "duration": round(self.duration, 6),
            "frames": self.frames,
            "audio_range": [self.seconds[0] if self.num_cuts else 0.0, self.seconds[1]],
            "manifests": manifests,
            "longest": [c.to_dict() for _, _, c in longest],
            "durations": durations[::step],
            "phones": dict(sorted(self.phones.items())),
        }


class _Desc(str):
    """Orders ids backwards: among cuts of equal length the heap keeps the smallest ids."""

    def __lt__(self, other):
        return str.__gt__(self, other)

    def __gt__(self, other):
        return str.__lt__(self, other)


def write_split(
    dataset_dir: Path,
    stem: str,
    shards: dict[int, Iterable[Cut]],
    as_dict: Callable[[Cut], dict] | None = None,
) -> dict:
    """Write the split's per-shard manifests (each atomically, streamed: `shards` may hold
    iterators), then its index; remove the manifests of this split that no longer belong to it
    (and the one-file layout). Returns the index's counts. `as_dict`: a faster equivalent of
    `Cut.to_dict` (bench/data_scale.py)."""
    index = index_path(dataset_dir, stem)
    index.unlink(missing_ok=True)  # incomplete until rewritten below
    stats, manifests = _Stats(), []
    for shard in sorted(shards):
        path, before = shard_manifest(dataset_dir, stem, shard), stats.num_cuts
        with atomic_path(path) as tmp, gzip.open(tmp, "wt", GZIP_LEVEL, "utf-8") as f:
            for cut in shards[shard]:
                f.write(json.dumps(cut.to_dict() if as_dict is None else as_dict(cut),
                                   ensure_ascii=False) + "\n")  # fmt: skip
                stats.add(cut)
        manifests.append({"file": path.name, "num_cuts": stats.num_cuts - before})
    keep = {m["file"] for m in manifests}
    for stale in dataset_dir.glob(f"cuts_{stem}.[0-9]*.jsonl.gz"):
        if stale.name not in keep:
            stale.unlink()
    single_manifest(dataset_dir, stem).unlink(missing_ok=True)
    record = stats.index(manifests)
    atomic_write_text(index, json.dumps(record, ensure_ascii=False) + "\n")
    return {k: record[k] for k in ("num_cuts", "duration", "frames")}


def remove_split(dataset_dir: Path, stem: str) -> None:
    """Delete every manifest of a split (both layouts)."""
    for path in dataset_dir.glob(f"cuts_{stem}.*"):
        if path.name.endswith((".jsonl.gz", ".index.json")):
            path.unlink()


def split_stems(dataset_dir: Path) -> set[str]:
    """Stems of the splits with manifests in dataset_dir (either layout)."""
    stems = {p.name[5 : -len(".index.json")] for p in dataset_dir.glob("cuts_*.index.json")}
    for p in dataset_dir.glob("cuts_*.jsonl.gz"):
        stem = p.name[5 : -len(".jsonl.gz")]
        if "." not in stem:
            stems.add(stem)
    return stems


def read_index(dataset_dir: Path, stem: str) -> SplitIndex | None:
    """The split's index, None when the split has none (one-file layout, or no such split)."""
    path = index_path(dataset_dir, stem)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun stage 1") from None
    if raw.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: index format {raw.get('format')!r}, expected {INDEX_FORMAT}")
    return SplitIndex(
        path=path,
        num_cuts=raw["num_cuts"],
        duration=raw["duration"],
        frames=raw["frames"],
        manifests=[dataset_dir / m["file"] for m in raw["manifests"]],
        longest=list(CutSet.from_dicts(raw["longest"])),
        durations=raw["durations"],
        audio_range=tuple(raw["audio_range"]),
        phones=raw["phones"],
    )


def read_cuts(dataset_dir: Path, stem: str) -> CutSet:
    """Every cut of a split, eagerly, from either layout (tools and tests; training streams)."""
    index = read_index(dataset_dir, stem)
    if index is None:
        return CutSet.from_file(single_manifest(dataset_dir, stem))
    return CutSet.from_cuts(c for m in index.manifests for c in CutSet.from_jsonl_lazy(m))
