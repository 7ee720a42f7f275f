"""Corpus readers: raw corpus -> lhotse cuts per split + the utterances left out and why.

* `libritts` - lhotse's own `prepare_libritts` (per-chapter `trans.tsv` / `book.tsv`);
* `ljspeech` - lhotse's `prepare_ljspeech` (`metadata.csv` + `wavs/`);
* `custom`/`custom_<name>` - a list file, one `audio_path|text|speaker` per line, audio paths
  relative to the list file.

lhotse's recipes die on the first unreadable wav (`Recording.from_file`) or malformed transcript
line, so they run on a *checked shadow copy* of the corpus: a folder of symlinks to the audio
files whose header soundfile can read and that hold samples, and cleaned copies of the text
files. Everything left out is returned as a rejection (id, path, reason); the recordings'
paths are mapped back to the real files afterwards.

Splits: LibriTTS subsets named in the config; otherwise (or when no subset is named) a held-out
fraction drawn with `split_seed` over all utterance ids of the corpus (before any filtering, so
that changing a filter never moves an utterance between splits).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

log = logging.getLogger("preprocess")


class CorpusError(RuntimeError):
    """A corpus path or list file is wrong; the message names it and the config key."""


@dataclass
class Corpus:
    splits: dict[str, CutSet]  # split name ("train", "valid", "test") -> cuts
    rejected: list[dict] = field(default_factory=list)  # {"id", "path", "reason"}


def reject(utt_id: str, path: str | os.PathLike, reason: str, detail: str = "") -> dict:
    entry = {"id": utt_id, "path": str(path), "reason": reason}
    if detail:
        entry["detail"] = detail
    return entry


def check_audio_header(path: Path) -> str | None:
    """None when soundfile can read the header and there are samples, else the reason."""
    try:
        info = sf.info(str(path))
    except Exception:
        return "unreadable_audio"
    return "zero_length_audio" if info.frames == 0 else None


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _cuts(recordings: RecordingSet, supervisions: SupervisionSet) -> CutSet:
    """One cut per recording, with the recording id as cut id (lhotse appends an index)."""
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return CutSet.from_cuts(fastcopy(c, id=c.recording_id) for c in cuts)


def _unshadow(recordings: RecordingSet, shadow: Path, root: Path) -> RecordingSet:
    """Point recordings back from the shadow symlinks to the real files."""
    shadow_s, root_s = str(shadow), str(root.resolve())

    def fix(rec: Recording) -> Recording:
        for src in rec.sources:
            if src.source.startswith(shadow_s):
                src.source = root_s + src.source[len(shadow_s) :]
        return rec

    return RecordingSet.from_recordings(fix(r) for r in recordings)


def _libritts_shadow(
    root: Path, part: str, shadow: Path, rejected: list[dict]
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Checked copy of one LibriTTS subset; returns the readable wavs (id -> path) and the
    transcript file of each transcribed id."""
    good: dict[str, Path] = {}
    wavs: set[str] = set()
    transcribed: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root / part):
        for name in sorted(files):
            src = Path(dirpath) / name
            dst = shadow / src.relative_to(root)
            if name.startswith("._"):
                continue
            if name.endswith(".wav"):
                wavs.add(src.stem)
                reason = check_audio_header(src)
                if reason:
                    rejected.append(reject(src.stem, src, reason))
                else:
                    _link(src, dst)
                    good[src.stem] = src
            elif name.endswith(".trans.tsv"):
                lines = []
                for lineno, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
                    if line.count("\t") == 2:
                        lines.append(line)
                        transcribed[line.split("\t")[0]] = src
                    elif line.strip():
                        utt = line.split("\t")[0].split()[0] if line.split() else f"line{lineno}"
                        rejected.append(
                            reject(utt, f"{src}:{lineno}", "malformed_transcript", repr(line)[:120])
                        )
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
                book = dst.with_name(dst.name.replace(".trans.tsv", ".book.tsv"))
                src_book = src.with_name(book.name)
                book_lines = []
                if src_book.is_file():
                    for line in src_book.read_text(encoding="utf-8").splitlines():
                        fields = line.split()
                        try:
                            float(fields[-1])
                        except (ValueError, IndexError):
                            continue
                        if len(fields) >= 2:
                            book_lines.append(line)
                book.write_text("".join(f"{x}\n" for x in book_lines), encoding="utf-8")
    for utt in sorted(set(transcribed) - wavs):
        rejected.append(reject(utt, transcribed[utt], "missing_audio"))
    return good, transcribed


def read_libritts(root: Path, pcfg, work: Path) -> Corpus:
    from lhotse.recipes import prepare_libritts

    wanted = {
        "train": pcfg.libritts_train_subsets,
        "valid": pcfg.libritts_valid_subsets,
        "test": pcfg.libritts_test_subsets,
    }
    parts = [p for subsets in wanted.values() for p in subsets]
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise CorpusError(
            f"dataset_path.libritts = {root}: subset folder(s) {missing} not found "
            "(check preprocess.libritts_*_subsets and dataset_path)"
        )
    shadow = _fresh_dir(work / ".lhotse_input")
    rejected: list[dict] = []
    checked = {p: _libritts_shadow(root, p, shadow, rejected) for p in parts}
    logging.getLogger("lhotse").setLevel(logging.ERROR)  # it warns per missing recording
    manifests = prepare_libritts(shadow, dataset_parts=parts)
    cuts_by_part = {}
    for part in parts:
        recs = _unshadow(manifests[part]["recordings"], shadow, root)
        sups = manifests[part]["supervisions"]
        good, transcribed = checked[part]
        # lhotse drops recordings without a transcript line (and unreadable ones) silently
        for utt in sorted(set(good) - {s.recording_id for s in sups}):
            reason = "unreadable_audio" if utt in transcribed else "missing_transcript"
            rejected.append(reject(utt, good[utt], reason))
        cuts_by_part[part] = _cuts(recs, sups)
    shutil.rmtree(shadow, ignore_errors=True)
    splits = {}
    for split, subsets in wanted.items():
        cut_list = [c for p in subsets for c in cuts_by_part[p]]
        if subsets:
            splits[split] = CutSet.from_cuts(cut_list)
    if "train" not in splits:
        raise CorpusError("preprocess.libritts_train_subsets is empty: name at least one subset")
    return Corpus(held_out(splits, pcfg), rejected)


def read_ljspeech(root: Path, pcfg, work: Path) -> Corpus:
    from lhotse.recipes import prepare_ljspeech

    meta = root / "metadata.csv"
    if not meta.is_file():
        raise CorpusError(f"dataset_path.ljspeech = {root}: metadata.csv not found")
    shadow = _fresh_dir(work / ".lhotse_input")
    rejected: list[dict] = []
    lines = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.strip().split("|")
        if len(fields) != 3:
            if line.strip():
                rejected.append(
                    reject(fields[0] or f"line{lineno}", f"{meta}:{lineno}", "malformed_transcript")
                )
            continue
        wav = root / "wavs" / f"{fields[0]}.wav"
        reason = "missing_audio" if not wav.is_file() else check_audio_header(wav)
        if reason:
            rejected.append(reject(fields[0], wav, reason))
            continue
        _link(wav, shadow / "wavs" / wav.name)
        lines.append(line.strip())
    (shadow / "metadata.csv").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    logging.getLogger("lhotse").setLevel(logging.ERROR)
    manifests = prepare_ljspeech(shadow)
    recs = _unshadow(manifests["recordings"], shadow, root)
    sups = SupervisionSet.from_segments(
        fastcopy(s, speaker=s.speaker or "LJ") for s in manifests["supervisions"]
    )
    shutil.rmtree(shadow, ignore_errors=True)
    cuts = _cuts(recs, sups)
    return Corpus(held_out({"train": cuts}, pcfg), rejected)


def read_custom(list_file: Path, pcfg, work: Path) -> Corpus:
    """`audio_path|text|speaker` per line; audio paths relative to the list file."""
    if not list_file.is_file():
        raise CorpusError(f"custom corpus list file not found: {list_file} (dataset_path)")
    rejected: list[dict] = []
    recordings, supervisions = [], []
    seen: set[str] = set()
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("|")
        if len(fields) != 3:
            rejected.append(
                reject(f"line{lineno}", f"{list_file}:{lineno}", "malformed_list_line", line[:120])
            )
            continue
        rel, text, speaker = (f.strip() for f in fields)
        path = (list_file.parent / rel).resolve()
        utt_id = Path(rel).with_suffix("").as_posix().replace("/", "_").lstrip("._") or rel
        if utt_id in seen:
            rejected.append(reject(utt_id, path, "duplicate_id", f"line {lineno}"))
            continue
        seen.add(utt_id)
        reason = "missing_audio" if not path.is_file() else check_audio_header(path)
        if reason:
            rejected.append(reject(utt_id, path, reason))
            continue
        try:
            rec = Recording.from_file(path, recording_id=utt_id)
        except Exception as e:
            rejected.append(reject(utt_id, path, "unreadable_audio", f"{type(e).__name__}: {e}"))
            continue
        recordings.append(rec)
        supervisions.append(
            SupervisionSegment(
                id=utt_id,
                recording_id=utt_id,
                start=0.0,
                duration=rec.duration,
                channel=0,
                text=text,
                speaker=speaker or "unknown",
            )
        )
    cuts = _cuts(
        RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    )
    return Corpus(held_out({"train": cuts}, pcfg), rejected)


def held_out(splits: dict[str, CutSet], pcfg) -> dict[str, CutSet]:
    """Draw valid/test from train by fraction when the corpus has no such split."""
    need = {s: f for s, f in (("valid", pcfg.valid_fraction), ("test", pcfg.test_fraction))}
    need = {s: f for s, f in need.items() if s not in splits and f > 0}
    if not need:
        return splits
    train = splits["train"]
    ids = sorted(train.ids)
    random.Random(pcfg.split_seed).shuffle(ids)
    taken, assigned = 0, {}
    for split, fraction in need.items():
        count = max(1, round(fraction * len(ids))) if len(ids) > 1 else 0
        for utt in ids[taken : taken + count]:
            assigned[utt] = split
        taken += count
    out = dict(splits)
    out["train"] = train.filter(lambda c: c.id not in assigned).to_eager()
    for split in need:
        out[split] = train.filter(lambda c, s=split: assigned.get(c.id) == s).to_eager()
    return out


def check_corpus_path(name: str, root: Path) -> None:
    """Fail early (before any heavy work) when a corpus path is wrong."""
    if name in ("libritts", "ljspeech") and not root.is_dir():
        raise CorpusError(f"dataset_path.{name} = {root}: no such directory")
    if name.startswith("custom") and not root.is_file():
        raise CorpusError(f"dataset_path.{name} = {root}: custom corpus list file not found")


def read_corpus(name: str, root: str | os.PathLike, pcfg, work: Path) -> Corpus:
    """Dispatch on the corpus name (`libritts`, `ljspeech`, `custom*`)."""
    root = Path(root)
    check_corpus_path(name, root)
    if name in ("libritts", "ljspeech"):
        reader = read_libritts if name == "libritts" else read_ljspeech
        return reader(root, pcfg, work)
    if name.startswith("custom"):
        return read_custom(root, pcfg, work)
    raise CorpusError(f"unknown corpus {name!r} in 'dataset'")


def corpus_files(name: str, root: str | os.PathLike, pcfg) -> list[Path]:
    """The files a corpus' manifests depend on (for the stage's up-to-date check)."""
    root = Path(root)
    if name.startswith("custom"):
        files = [root]
        if root.is_file():
            for line in root.read_text(encoding="utf-8").splitlines():
                fields = line.split("|")
                if len(fields) == 3:
                    files.append(root.parent / fields[0].strip())
        return files
    tops = (
        [
            root / p
            for p in pcfg.libritts_train_subsets
            + pcfg.libritts_valid_subsets
            + pcfg.libritts_test_subsets
        ]
        if name == "libritts"
        else [root]
    )
    files = []
    for top in tops:
        for dirpath, _, names in os.walk(top):
            files.extend(Path(dirpath) / n for n in names)
    return sorted(files)
