"""Parler-TTS corpora -> lhotse cuts per split, with the description and style each one has.

* `custom` / `custom_<name>`: a list file, one `audio|text|description[|speaker]` per line
  (`#` comments and blank lines skipped), audio paths relative to the list file; an empty
  description is written by the annotation step;
* `libritts` / `libritts_r`: lhotse's `prepare_libritts` (LibriTTS-R has the LibriTTS layout;
  lhotse's `prepare_librittsr` is the same function), through `preprocessors.corpora`'s checked
  reader; no descriptions;
* `expresso` / `expresso_<name>`: the Expresso release layout (read speech only)

      <root>/read_transcriptions.txt               "<id>\\t<text>" (*word* marks emphasis)
      <root>/audio_48khz/read/<spk>/<style>/base/<id>.wav    (ex04/happy/base/ex04_happy_00085.wav)
      <root>/audio_48khz/read/<spk>/<style>/longform/...     long recordings: rejected (minutes
                                                             long, one transcript per file)
      <root>/splits/{train,dev,test}.txt           optional: first field of each line = <id>

  speaker = `preprocess.expresso_speaker_names[<spk>]` (default Jerry / Elisabeth / Thomas /
  Talia), style = the style folder; the transcript loses the emphasis asterisks. The improvised
  dialogues (`audio_48khz/conversational/`, stereo, no per-segment transcript) are not read.
  With a splits/ folder dev = valid and the test ids are left out (reason `test_split`);
  without one, `preprocess.valid_fraction` is held out.

Every left-out utterance is a rejection (id, path, reason), never an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from preprocessors.corpora import Corpus, CorpusError, check_audio_header, held_out, reject

log = logging.getLogger("preprocess")


def corpus_settings(pcfg) -> SimpleNamespace:
    """The settings `preprocessors.corpora`'s readers read, from the Parler preprocess section
    (no test split: stage 1 writes train and valid)."""
    return SimpleNamespace(
        libritts_train_subsets=pcfg.libritts_train_subsets,
        libritts_valid_subsets=pcfg.libritts_valid_subsets,
        libritts_test_subsets=[],
        valid_fraction=pcfg.valid_fraction,
        test_fraction=0.0,
        split_seed=pcfg.split_seed,
    )


def _cut(utt_id: str, path: Path, text: str, speaker: str | None, **custom) -> Cut | str:
    """A one-supervision cut of the whole file, or the rejection reason."""
    reason = "missing_audio" if not path.is_file() else check_audio_header(path)
    if reason:
        return reason
    try:
        rec = Recording.from_file(path, recording_id=utt_id)
    except Exception:
        return "unreadable_audio"
    sup = SupervisionSegment(id=utt_id, recording_id=utt_id, start=0.0, duration=rec.duration,
                             channel=0, text=text, speaker=speaker)  # fmt: skip
    return fastcopy(rec.to_cut(), id=utt_id, supervisions=[sup], custom=custom)


def read_custom_list(list_file: Path, pcfg) -> Corpus:
    """`audio|text|description[|speaker]` per line (see the module docstring)."""
    if not list_file.is_file():
        raise CorpusError(f"custom corpus list file not found: {list_file} (dataset_path)")
    rejected: list[dict] = []
    cuts, seen = [], set()
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        where = f"{list_file}:{lineno}"
        if len(fields) not in (3, 4) or not fields[0]:
            detail = f"expected audio|text|description[|speaker], got {len(fields)} field(s)"
            rejected.append(reject(f"line{lineno}", where, "malformed_list_line", detail))
            continue
        rel, text, description = fields[:3]
        speaker = fields[3] if len(fields) == 4 and fields[3] else None
        utt_id = Path(rel).with_suffix("").as_posix().replace("/", "_").lstrip("._") or rel
        if utt_id in seen:
            rejected.append(reject(utt_id, where, "duplicate_id"))
            continue
        seen.add(utt_id)
        path = (list_file.parent / rel).resolve()
        cut = _cut(utt_id, path, text, speaker, description=description or None, style=None)
        if isinstance(cut, str):
            rejected.append(reject(utt_id, path, cut, f"line {lineno}"))
        else:
            cuts.append(cut)
    return Corpus(held_out({"train": CutSet.from_cuts(cuts)}, corpus_settings(pcfg)), rejected)


def _expresso_transcripts(root: Path, rejected: list[dict]) -> dict[str, str]:
    path = root / "read_transcriptions.txt"
    if not path.is_file():
        raise CorpusError(f"dataset_path = {root}: read_transcriptions.txt not found (Expresso)")
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        utt_id, tab, text = line.partition("\t")
        if not tab or not utt_id.strip():
            if line.strip():
                rejected.append(reject(f"line{lineno}", f"{path}:{lineno}", "malformed_transcript"))
            continue
        out[utt_id.strip()] = text.replace("*", "").strip()
    return out


def _expresso_splits(root: Path) -> dict[str, str] | None:
    """{id: "train" | "valid" | "test"} from splits/*.txt, or None without that folder."""
    folder = root / "splits"
    if not folder.is_dir():
        return None
    out = {}
    for name, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        path = folder / f"{name}.txt"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        for line in lines:
            if line.split():
                out[Path(line.split()[0]).stem] = split
    return out


def read_expresso(root: Path, pcfg) -> Corpus:
    """The Expresso read speech (see the module docstring)."""
    read = root / "audio_48khz" / "read"
    if not read.is_dir():
        raise CorpusError(f"dataset_path = {root}: audio_48khz/read/ not found (Expresso layout)")
    rejected: list[dict] = []
    texts = _expresso_transcripts(root, rejected)
    splits = _expresso_splits(root)
    kept = {"train": [], "valid": []}
    styles = set(pcfg.expresso_styles)
    for dirpath, _, files in sorted(os.walk(read)):
        for name in sorted(f for f in files if f.endswith(".wav") and not f.startswith("._")):
            path = Path(dirpath) / name
            speaker, style, kind = path.relative_to(read).parts[:3]
            if styles and style not in styles:
                continue  # not asked for (preprocess.expresso_styles)
            utt_id = path.stem
            if kind != "base":
                rejected.append(reject(utt_id, path, "longform", "only read/*/*/base/ is used"))
                continue
            split = splits.get(utt_id, "train") if splits is not None else "train"
            if utt_id not in texts:
                rejected.append(reject(utt_id, path, "missing_transcript"))
                continue
            if split == "test":
                rejected.append(reject(utt_id, path, "test_split", "splits/test.txt"))
                continue
            who = pcfg.expresso_speaker_names.get(speaker, speaker)
            cut = _cut(utt_id, path, texts.pop(utt_id), who, description=None, style=style)
            if isinstance(cut, str):
                rejected.append(reject(utt_id, path, cut))
            else:
                kept[split].append(cut)
    for utt_id in sorted(texts):
        speaker, style = (utt_id.split("_") + ["", ""])[:2]
        if (not styles or style in styles) and "longform" not in utt_id:
            rejected.append(reject(utt_id, read / speaker / style / "base", "missing_audio"))
    out = {s: CutSet.from_cuts(c) for s, c in kept.items() if c or s == "train"}
    return Corpus(held_out(out, corpus_settings(pcfg)) if splits is None else out, rejected)


def corpus_files(kind: str, root: Path, pcfg) -> list[Path]:
    """The files a corpus' manifests depend on (for the stage's up-to-date check)."""
    if kind == "custom":
        files = [root]
        for line in root.read_text(encoding="utf-8").splitlines() if root.is_file() else []:
            fields = line.split("|")
            if len(fields) in (3, 4) and not line.lstrip().startswith("#"):
                files.append(root.parent / fields[0].strip())
        return files
    tops = [root]
    if kind == "libritts":
        tops = [root / p for p in pcfg.libritts_train_subsets + pcfg.libritts_valid_subsets]
    found = []
    for top in tops:
        for dirpath, _, names in os.walk(top):
            found.extend(Path(dirpath) / n for n in names)
    return sorted(found)
