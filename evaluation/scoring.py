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
FIELDS = ("name", "text", "text_prompt", "audio_prompt", "output")


class EvaluationError(RuntimeError):
    """Stage 4 cannot go on; the message names the file and what to do."""


@dataclass
class Item:
    name: str
    text: str  # reference for WER/CER ("" = continual output: no reference)
    audio_prompt: Path
    output: Path


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
        missing = [k for k in FIELDS if not isinstance(rec.get(k), str)]
        if missing or rec["name"] in seen:
            why = f"missing field(s) {missing}" if missing else f"duplicate name {rec['name']!r}"
            failures.append({"name": rec.get("name") or where, "error": f"{where}: {why}"})
            continue
        seen.add(rec["name"])
        continual = rec.get("stop_reason") == "continual"
        if not rec["text"].strip() and not continual:
            failures.append({"name": rec["name"], "error": f"{where}: empty text"})
            continue
        paths = [Path(rec[k]) for k in ("audio_prompt", "output")]
        prompt, output = (p if p.is_absolute() else path.parent / p for p in paths)
        items.append(Item(rec["name"], "" if continual else rec["text"], prompt, output))
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

    def _load(self, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        output = load_checked(item.output, "output")
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
            extra = [r for _, (_, _, r) in ok if r is not None]
            emb = self.sim.embed(outputs + [p for _, (_, p, _) in ok] + extra)
            n = len(ok)
            sim_o = np.sum(emb[:n] * emb[n : 2 * n], axis=1)
            sim_r = np.sum(emb[:n] * emb[2 * n :], axis=1) if extra else [None] * n
            mos = self.mos.score(outputs) if self.mos is not None else [{}] * n
            for i, (item, (output, _, _)) in enumerate(ok):
                rec = {"seconds": round(len(output) / SAMPLE_RATE, 3), "hyp": hyps[i]}
                rec.update(self._wer(item, hyps[i]))
                rec["sim_o"] = float(sim_o[i])
                rec["sim_r"] = None if sim_r[i] is None else float(sim_r[i])
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
