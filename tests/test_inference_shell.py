"""The recipe-agnostic inference shell (models/base/inference.py) with a second, toy recipe.

The toy has its own line format (`text[|name]`, as TokTTS will) and a `Synthesis` that makes one
frame of codes per character, drawn from the generator of the item's seed: so what is checked is
the shell's part - the list reading and its per-line errors, batching, seeds, the wav files and
results.jsonl - independently of VALL-E (tests/test_inference.py runs VALL-E through it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile as sf
import torch

from models.base.inference import (
    InferenceError,
    claim_run_dir,
    output_name,
    read_test_list,
    synthesize,
    utterance_seed,
)
from models.base.inference_split import synthesize_parallel


@dataclass
class Line:
    name: str
    text: str
    line: int | None

    def fields(self) -> dict:
        return {"text": self.text}


def parse_line(raw: str, lineno: int, base: Path) -> Line:
    fields = [f.strip() for f in raw.split("|")]
    if len(fields) > 2:
        raise InferenceError(f"{len(fields)} fields; expected text[|name]")
    if not fields[0]:
        raise InferenceError("empty text")
    return Line(output_name(fields[1] if len(fields) == 2 else None, lineno), fields[0], lineno)


@dataclass
class Item:
    utt: Line
    ids: list[int]

    @property
    def length(self) -> tuple[int]:
        return (len(self.ids),)


class CharSynthesis:
    sample_rate = 8000
    hop = 4

    def __init__(self):
        self.batches: list[list[str]] = []

    def prepare(self, utts: list[Line]) -> list[Item | InferenceError]:
        return [
            InferenceError(f"cannot say {u.text!r}") if "!" in u.text else Item(u, list(u.text))
            for u in utts
        ]

    def generate(self, batch: list[Item], seeds: list[int]):
        self.batches.append([item.utt.name for item in batch])
        codes = [
            torch.randint(0, 1024, (len(item.ids), 2), generator=torch.Generator().manual_seed(s))
            for item, s in zip(batch, seeds, strict=True)
        ]
        return codes, ["eos"] * len(batch)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes[:, 0].float() / 2048).repeat_interleave(self.hop)

    def record(self, item: Item) -> dict:
        return {"ids": len(item.ids)}


LINES = [
    "hello there|h",  # 1
    "hi",  # 2
    "",  # 3 blank
    "# a comment",  # 4
    "a|b|c",  # 5 too many fields
    "oops!",  # 6 fails in prepare
    "again|h",  # 7 duplicate name
    "a much longer text",  # 8
    "mid size|bad/name",  # 9
]


def test_a_second_recipe_runs_through_the_shell(tmp_path):
    test_list = tmp_path / "list.txt"
    test_list.write_text("\n".join(LINES) + "\n")
    utts, failures = read_test_list(test_list, parse_line)
    assert [(u.name, u.line) for u in utts] == [("h", 1), ("2", 2), ("6", 6), ("8", 8)]
    assert [f.line for f in failures] == [5, 7, 9]
    assert "already used by line 1" in failures[1].message

    synth = CharSynthesis()
    run_dir = claim_run_dir(tmp_path / "out", "batch", overwrite=False)
    summary = synthesize(synth, utts, run_dir, failures, batch_size=2, seed=3, progress=False)
    assert synth.batches == [["8", "h"], ["2"]]  # longest first, two at a time
    lines = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    records, errors = lines[:3], lines[3:]
    assert [e["line"] for e in errors] == [5, 6, 7, 9]  # the list's and prepare's, by line
    assert "cannot say 'oops!'" in errors[1]["error"]
    assert [len(summary.failures), len(summary.records)] == [4, 3]
    for record in records:
        assert list(record)[:3] == ["name", "line", "text"]
        assert record["seed"] == utterance_seed(3, record["name"])
        assert record["frames"] == record["ids"] == len(record["text"])
        wav, sr = sf.read(record["output"])
        assert sr == 8000 and len(wav) == record["frames"] * 4 == round(record["seconds"] * sr)
        assert Path(record["output"]) == run_dir / f"{record['name']}.wav"

    # One seed per utterance: the same audio at batch size 1, and for a line run on its own.
    alone = claim_run_dir(tmp_path / "out", "batch", overwrite=False)
    assert alone.name == "batch-2"
    synthesize(CharSynthesis(), utts[:1], alone, batch_size=1, seed=3, progress=False)
    assert (alone / "h.wav").read_bytes() == (run_dir / "h.wav").read_bytes()


# --------------------------------------------------------------------------------------------
# The split over worker processes (models/base/inference_split.py)
# --------------------------------------------------------------------------------------------


class CrashingSynthesis(CharSynthesis):
    """Dies (like a process killed by the out-of-memory killer) on a text saying "die", raises
    on one saying "boom"."""

    def generate(self, batch: list[Item], seeds: list[int]):
        texts = " ".join(item.utt.text for item in batch)
        if "die" in texts:
            os._exit(3)
        if "boom" in texts:
            raise RuntimeError("boom in generate")
        return super().generate(batch, seeds)


def crashing_synthesis(device: torch.device) -> CrashingSynthesis:  # picklable: a module function
    return CrashingSynthesis()


SPLIT_LINES = ["one", "two two", "three three three", "four", "oops!", "six six"]


def _split_run(out: Path, lines: list[str], overwrite: bool = False):
    test_list = out.parent / "split.txt"
    test_list.write_text("\n".join(lines) + "\n")
    utts, failures = read_test_list(test_list, parse_line)
    run_dir = claim_run_dir(out, "batch", overwrite=overwrite)
    devices = [torch.device("cpu")] * 2
    synthesize_parallel(crashing_synthesis, utts, run_dir, failures, devices=devices,
                        batch_size=2, seed=3, progress=False, extra={"x": 1})  # fmt: skip
    return run_dir


def _results(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in x.items() if k not in ("output", "wall_time", "rtf", "batch_size")}
        for x in lines
    ]


def test_workers_merge_in_list_order_and_a_dead_worker_leaves_nothing_half_written(tmp_path):
    # A worker that dies or raises: the run fails naming it and its lines; nothing half-written.
    crashes = {"die": "exited with status 3 without a result",
               "boom": "RuntimeError: boom in generate"}  # fmt: skip
    for n, (word, reason) in enumerate(crashes.items(), 1):
        crash = [*SPLIT_LINES[:5], f"{word} here", "seven"]  # sorted 3,6,2,5,7,4,1: 6 -> worker 1
        with pytest.raises(InferenceError) as e:
            _split_run(tmp_path / "out", crash)
        assert f"worker 1 (cpu) failed: {reason}; its lines: 4, 5, 6." in str(e.value)
        failed = tmp_path / "out" / ("batch" if n == 1 else f"batch-{n}")
        assert [p.name for p in failed.iterdir()] == ["results.jsonl"]  # the claim, empty
        assert (failed / "results.jsonl").read_text() == ""
    # A re-run into the crashed folder is clean; the workers' results merge in list order.
    again = _split_run(tmp_path / "out", SPLIT_LINES, overwrite=True)
    assert again == tmp_path / "out" / "batch"
    lines = _results(again)
    assert [x["line"] for x in lines] == [1, 2, 3, 4, 6, 5]  # list order, then the failure
    assert "cannot say 'oops!'" in lines[-1]["error"]
    assert all(x["x"] == 1 and x["seed"] == utterance_seed(3, x["name"]) for x in lines[:-1])
    names = sorted(p.name for p in again.iterdir())
    assert names == [f"{n}.wav" for n in "12346"] + ["results.jsonl"]  # no part files left
    # ... and equal what one process writes.
    utts, failures = read_test_list(tmp_path / "split.txt", parse_line)
    one = claim_run_dir(tmp_path / "one", "batch", overwrite=False)
    synthesize(CharSynthesis(), utts, one, failures, batch_size=2, seed=3, progress=False,
               extra={"x": 1})  # fmt: skip
    assert _results(one) == lines
    for name in names[:-1]:
        assert (one / name).read_bytes() == (again / name).read_bytes()
