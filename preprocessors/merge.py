"""Stage 1, last step: encoded shards -> per-shard manifests of each split (utils/cut_shards.py).

Also the bookkeeping of stage 1 split over jobs (`--nj N --job_index I`): shard k of the plan
(all corpora in config order, then shard order) belongs to job k % N (`job_of`); the merge
refuses to start while a shard is missing or incomplete, naming it, the job that owns it and the
command that makes it (`check_shards_complete`).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from lhotse import CutSet

from models.codec.encodec import codec_span
from preprocessors.tokenize import ShardTask
from text.symbol_table import SymbolTable
from utils.config import resolve_path
from utils.cut_shards import remove_split, split_stems, write_split
from utils.fileio import atomic_write_text

SHARD_FILES = (".h5", ".jsonl.gz", ".rejected.jsonl", ".done")


class StageError(RuntimeError):
    """Stage 1 cannot produce usable output; the message says why and what to do."""


def split_names(pcfg) -> dict[str, str]:
    """Split -> file stem (train_file / valid_file keep Amphion's meaning: the stem names it)."""
    return {
        "train": Path(pcfg.train_file).stem,
        "valid": Path(pcfg.valid_file).stem,
        "test": "test",
    }


def job_of(position: int, nj: int) -> int:
    """The job (of `nj`) that encodes the shard at `position` in the plan."""
    return position % nj


def shard_complete(task: ShardTask) -> bool:
    """All files of the shard are there, the `.done` marker (written last) included."""
    return all((Path(task.out_dir) / f"{task.name}{ext}").is_file() for ext in SHARD_FILES)


def check_shards_complete(tasks: list[ShardTask], nj: int, job_command: str) -> None:
    """Fail naming every missing / incomplete shard, its job and the command that makes it
    (`job_command` formatted with `job=`)."""
    missing: dict[int, list[str]] = {}
    for position, task in enumerate(tasks):
        if not shard_complete(task):
            missing.setdefault(job_of(position, nj), []).append(f"{task.dataset}/{task.name}")
    if not missing:
        return
    lines = [
        f"  job {job} of {nj} ({len(names)} shard(s): {', '.join(names[:4])}"
        f"{' ...' if len(names) > 4 else ''}): {job_command.format(job=job)}"
        for job, names in sorted(missing.items())
    ]
    total = sum(map(len, missing.values()))
    raise StageError(
        f"cannot merge: {total} of {len(tasks)} shards are missing or incomplete. Run (or "
        "rerun) the jobs that own them with the same config, then this merge again:\n"
        + "\n".join(lines)
    )


def _read_shards(tasks: list[ShardTask], token_dir: Path, rejected: list) -> tuple[dict, dict]:
    encoded, shard_of = {}, {}
    for task in tasks:
        for cut in CutSet.from_file(token_dir / f"{task.name}.jsonl.gz"):
            encoded[cut.id], shard_of[cut.id] = cut, task.index
        for line in (token_dir / f"{task.name}.rejected.jsonl").read_text().splitlines():
            rejected.append(json.loads(line))
    return encoded, shard_of


def merge_dataset(name: str, kept, tasks, rejected, out: Path, pcfg) -> dict:
    """Write the dataset's split manifests (one per shard + index), rejected.jsonl and
    summary.json; remove files no longer referenced. Returns the summary."""
    work = out / name
    token_dir = work / pcfg.acoustic_token_dir
    encoded, shard_of = _read_shards(tasks, token_dir, rejected)
    summary = {"splits": {}, "rejected": {}}
    names = split_names(pcfg)
    for split, cuts in kept.items():
        cuts[:] = [c for c in cuts if c.id in encoded]  # drop cuts whose audio was rejected
        shards: dict[int, list] = {}
        for c in sorted(cuts, key=lambda c: c.id):
            final = codec_span(encoded[c.id]).with_custom("phones", c.custom["phones"])
            shards.setdefault(shard_of[c.id], []).append(final)
        write_split(work, names[split], shards)
        final = [c for members in shards.values() for c in members]
        summary["splits"][names[split]] = {
            "utterances": len(final),
            "hours": round(sum(c.recording.duration for c in final) / 3600, 4),
            "speakers": len({s.speaker for c in final for s in c.supervisions}),
        }
    for stale in split_stems(work) - {names[split] for split in kept}:
        remove_split(work, stale)  # a split that no longer exists
    rejected.sort(key=lambda r: (r["reason"], r["id"]))
    atomic_write_text(
        work / "rejected.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected)
    )
    summary["rejected"] = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    # Files of other fingerprints (older settings, killed runs) are no longer referenced.
    current = {t.name for t in tasks}
    for f in token_dir.iterdir():
        if not any(f.name.startswith(n + ".") for n in current):
            f.unlink() if f.is_file() else shutil.rmtree(f, ignore_errors=True)
    atomic_write_text(work / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_symbols(out: Path, kept_all: list, pcfg, log) -> Path:
    path = out / pcfg.symbols_dict
    if pcfg.existing_symbols_dict:
        src = resolve_path(pcfg.existing_symbols_dict)
        if not path.is_file() or path.read_bytes() != src.read_bytes():
            atomic_write_text(path, src.read_text(encoding="utf-8"))
        return path
    phones = {p for c in kept_all for p in c.custom["phones"]}
    if path.is_file():
        old = SymbolTable.from_file(path)
        if phones <= set(old.symbols):
            return path  # keep the ids of the previous run
        log.warning(
            "symbols.dict: new phones %s; ids change (as Amphion merges tables)",
            sorted(phones - set(old.symbols)),
        )
        phones |= set(old.symbols) - {"<eps>"}
    SymbolTable.from_symbols(phones).to_file(path)
    return path
