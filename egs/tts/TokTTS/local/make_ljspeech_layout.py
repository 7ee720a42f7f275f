#!/usr/bin/env python3
"""Rearrange a LibriTTS-layout corpus (e.g. the espeak-ng mini corpus of the VALL-E demo,
egs/tts/VALLE/local/make_mini_corpus.py) into the LJSpeech layout TokTTS's stage 1 reads:

    <out_dir>/metadata.csv     id|transcript|normalized transcript (LJSpeech's three fields)
    <out_dir>/wavs/<id>.wav    the audio (copied)
    <out_dir>/test_list.txt    text|name lines for stage 3: the texts of --test_subset whose
                               characters all occur in the corpus (TokTTS knows only those)

The utterances of --subsets become the corpus; those of --test_subset only give test texts.
Idempotent (the folder is built under a temporary name and renamed when complete).

Usage: python egs/tts/TokTTS/local/make_ljspeech_layout.py --libritts_dir corpus/mini/LibriTTS \
           --out_dir corpus/mini_lj
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def transcripts(subset_dir: Path) -> list[tuple[str, str, Path]]:
    """(utterance id, normalized text, wav) of every transcribed wav of a LibriTTS subset."""
    found = []
    for tsv in sorted(subset_dir.rglob("*.trans.tsv")):
        for line in tsv.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            wav = tsv.parent / f"{fields[0]}.wav"
            if len(fields) == 3 and wav.is_file():
                found.append((fields[0], fields[2], wav))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--libritts_dir", required=True, type=Path, help="LibriTTS-layout root")
    p.add_argument("--out_dir", required=True, type=Path, help="LJSpeech-layout output folder")
    p.add_argument("--subsets", nargs="+", default=["train-clean-100"], help="corpus subsets")
    p.add_argument("--test_subset", default="dev-clean", help="subset giving the test texts")
    args = p.parse_args()
    utts = [u for s in args.subsets for u in transcripts(args.libritts_dir / s)]
    if not utts:
        print(f"no transcribed wavs under {args.libritts_dir} ({args.subsets})", file=sys.stderr)
        return 1
    tmp = args.out_dir.with_name(f".{args.out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wavs").mkdir(parents=True)
    for utt, _, wav in utts:
        shutil.copyfile(wav, tmp / "wavs" / f"{utt}.wav")
    rows = "".join(f"{utt}|{text}|{text}\n" for utt, text, _ in utts)
    (tmp / "metadata.csv").write_text(rows, encoding="utf-8")
    tests = transcripts(args.libritts_dir / args.test_subset) if args.test_subset else []
    known = {ch for _, text, _ in utts for ch in text}
    tests = [t for t in tests if set(t[1]) <= known]
    listing = "".join(f"{text}|test_{i:02d}\n" for i, (_, text, _) in enumerate(tests))
    (tmp / "test_list.txt").write_text("# text|name\n" + listing, encoding="utf-8")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    tmp.rename(args.out_dir)
    print(f"{args.out_dir}: {len(utts)} utterances, {len(tests)} test lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
