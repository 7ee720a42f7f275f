"""Score a stage-3 output folder: read results.jsonl, score in batches, append metrics.jsonl.

One `metrics.jsonl` line per utterance: `name`, `output`, the metrics (`wer`, `cer` and their
edit counts, `sim_o`, `sim_r`, `dnsmos_*`), the ASR hypothesis, and `backends` (what produced
the numbers); or `name` + `error` for one that could not be scored. Lines are appended, flushed
and fsync'ed as each batch finishes, so a killed run loses nothing it had finished, and a re-run
skips every utterance already scored with the same `backends` (failed ones are retried).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluation.backends import SAMPLE_RATE
from evaluation.text import NORMALISER, error_counts, normalise
from utils.audio import AudioError, load_audio

log = logging.getLogger(__name__)
SILENCE_RMS = 1e-4  # below this RMS an output counts as silence (-80 dBFS)
FIELDS = ("name", "text", "output")
PROMPT_FIELDS = ("text_prompt", "audio_prompt")  # not in a description-conditioned record (Parler)


class EvaluationError(RuntimeError):
    """Stage 4 cannot go on; the message names the file and what to do."""


@dataclass
class Item:
    name: str
    text: str  # reference for WER/CER ("" = continual output: no reference)
    audio_prompt: Path | None  # None: no prompt audio (Parler-TTS: a description), no SIM-o
    output: Path
    speaker: str | None = None  # the speaker name the record gives (same-speaker similarity)


def read_results(path: Path) -> tuple[list[Item], list[dict]]:
    """Utterances of a stage-3 results.jsonl and {"name", "error"} for each bad / failed line."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file (stage 3 writes <run dir>/results.jsonl)")
    items, failures, seen = [], [], set()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path.name} line {lineno}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            failures.append({"name": where, "error": f"not JSON ({e})"})
            continue
        if "error" in rec:  # stage 3 could not synthesise this test-list line
            name = rec.get("name") or f"test-list line {rec.get('line')}"
            failures.append({"name": name, "error": f"stage 3 failed: {rec['error']}"})
            continue
        needed = FIELDS if "description" in rec else FIELDS + PROMPT_FIELDS
        missing = [k for k in needed if not isinstance(rec.get(k), str)]
        if missing or rec["name"] in seen:
            why = f"missing field(s) {missing}" if missing else f"duplicate name {rec['name']!r}"
            failures.append({"name": rec.get("name") or where, "error": f"{where}: {why}"})
            continue
        seen.add(rec["name"])
        continual = rec.get("stop_reason") == "continual"
        if not rec["text"].strip() and not continual:
            failures.append({"name": rec["name"], "error": f"{where}: empty text"})
            continue
        paths = [Path(rec[k]) if rec.get(k) else None for k in ("audio_prompt", "output")]
        prompt, output = (p if p is None or p.is_absolute() else path.parent / p for p in paths)
        text = "" if continual else rec["text"]
        items.append(Item(rec["name"], text, prompt, output, rec.get("speaker") or None))
    return items, failures


def read_done(path: Path, backends: dict) -> dict[str, dict]:
    """name -> the last line of metrics.jsonl scored with these backends (errors excluded)."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:  # a line cut by a kill mid-write: scored again
            continue
        if rec.get("backends") == backends:
            if "error" in rec:
                done.pop(rec.get("name"), None)
            else:
                done[rec["name"]] = rec
    return done


def append_line(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def load_checked(path: Path, what: str) -> np.ndarray:
    """16 kHz mono float32; AudioError for missing / unreadable / empty / silent audio."""
    wav = load_audio(path, SAMPLE_RATE).numpy()
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    if rms < SILENCE_RMS:
        raise AudioError(path, f"{what} is silence (RMS {rms:.1e})")
    return wav


class Scorer:
    """The loaded backends; `resynth(prompt_path) -> 16 kHz wav` enables SIM-r (codec known)."""

    def __init__(self, asr, sim, mos=None, resynth: Callable | None = None, codec: str = ""):
        self.asr, self.sim, self.mos, self.resynth = asr, sim, mos, resynth
        self.backends = {
            "asr": f"{asr.name} ({asr.version})",
            "normaliser": NORMALISER,
            "sim": f"{sim.name} ({sim.version})",
            "mos": f"{mos.name} ({mos.version})" if mos is not None else "none",
            "sim_r": codec if resynth is not None else "none",
        }

    def _load(self, item: Item) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        output = load_checked(item.output, "output")
        if item.audio_prompt is None:
            return output, None, None
        prompt = load_checked(item.audio_prompt, "audio prompt")
        resynth = self.resynth(item.audio_prompt) if self.resynth is not None else None
        return output, prompt, resynth

    def score_batch(self, items: list[Item]) -> list[dict]:
        """One record per item (metrics, or an error naming the file and the reason)."""
        records: dict[str, dict] = {}
        ok: list[tuple[Item, tuple]] = []
        for item in items:
            reference = normalise(item.text) if item.text else ""
            if item.text and not reference:
                records[item.name] = {"error": f"text {item.text!r} is empty once normalised"}
                continue
            try:
                ok.append((item, self._load(item)))
            except AudioError as e:
                records[item.name] = {"error": str(e)}
        if ok:
            outputs = [o for _, (o, _, _) in ok]
            hyps = self.asr.transcribe(outputs)
            sim_o, sim_r = self._similarities(outputs, [loaded for _, loaded in ok])
            mos = self.mos.score(outputs) if self.mos is not None else [{}] * len(ok)
            for i, (item, (output, _, _)) in enumerate(ok):
                rec = {"seconds": round(len(output) / SAMPLE_RATE, 3), "hyp": hyps[i]}
                rec.update(self._wer(item, hyps[i]))
                rec["sim_o"], rec["sim_r"] = sim_o[i], sim_r[i]
                rec.update(mos[i])
                records[item.name] = rec
        return [
            {
                "name": it.name,
                "output": str(it.output),
                **records[it.name],
                "backends": self.backends,
            }
            for it in items
        ]

    def _similarities(self, outputs: list, loaded: list) -> tuple[list, list]:
        """SIM-o (output vs prompt) and SIM-r (vs the resynthesised prompt) per item; None
        where there is no prompt / no resynthesis."""
        pairs = [(i, k, w) for i, ld in enumerate(loaded) for k, w in ((1, ld[1]), (2, ld[2]))
                 if w is not None]  # fmt: skip
        emb = self.sim.embed(outputs + [w for _, _, w in pairs])
        sims: list[list] = [[None] * len(outputs), [None] * len(outputs)]
        for j, (i, k, _) in enumerate(pairs):
            sims[k - 1][i] = float(np.sum(emb[i] * emb[len(outputs) + j]))
        return sims[0], sims[1]

    @staticmethod
    def _wer(item: Item, hyp: str) -> dict:
        if not item.text:  # a continual output re-speaks an unknown part of its prompt
            return {"wer": None, "cer": None}
        counts = error_counts(normalise(item.text), normalise(hyp))
        return {
            "wer": counts["wer_errors"] / counts["wer_words"],
            "cer": counts["cer_errors"] / counts["cer_chars"],
            **counts,
        }


def score_all(
    items: list[Item], scorer: Scorer, metrics_path: Path, batch_size: int, progress: bool = True
) -> dict[str, dict]:
    """Score what metrics_path does not hold yet; name -> record for every item."""
    done = read_done(metrics_path, scorer.backends)
    todo = [it for it in items if it.name not in done]
    if done:
        log.info("%s: %d utterance(s) already scored with these backends, skipped",
                 metrics_path, len(items) - len(todo))  # fmt: skip
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    results = {it.name: done[it.name] for it in items if it.name in done}
    bar = tqdm(total=len(todo), desc="scoring", unit="utt", disable=not progress)
    with open(metrics_path, "a", encoding="utf-8") as handle:
        if not ends_with_newline(metrics_path):  # a kill mid-line: start on a fresh line
            handle.write("\n")
        for i in range(0, len(todo), batch_size):
            for rec in scorer.score_batch(todo[i : i + batch_size]):
                append_line(handle, rec)
                results[rec["name"]] = rec
            bar.update(min(batch_size, len(todo) - i))
    bar.close()
    return results


def same_speaker_similarity(items: list[Item], sim, batch_size: int) -> dict[str, float]:
    """name -> mean cosine similarity of the item's output to the other outputs that name the
    same speaker (items without a speaker, alone with theirs, or whose audio fails: absent).
    For systems without prompt audio (Parler-TTS): does a named voice stay the same voice?"""
    groups: dict[str, list[Item]] = {}
    for item in items:
        if item.speaker:
            groups.setdefault(item.speaker, []).append(item)
    out: dict[str, float] = {}
    for members in groups.values():
        wavs, kept = [], []
        for item in members:
            try:
                wavs.append(load_checked(item.output, "output"))
                kept.append(item)
            except AudioError:
                continue  # reported by the per-utterance scoring already
        if len(kept) < 2:
            continue
        emb = np.concatenate([sim.embed(wavs[i : i + batch_size])
                              for i in range(0, len(wavs), batch_size)])  # fmt: skip
        cos = emb @ emb.T  # embeddings are unit vectors
        for i, item in enumerate(kept):
            out[item.name] = float((cos[i].sum() - cos[i, i]) / (len(kept) - 1))
    return out
