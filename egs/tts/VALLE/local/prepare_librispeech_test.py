#!/usr/bin/env python3
"""The VALL-E evaluation protocol on LibriSpeech test-clean, as stage-3 test lists + references.

    python egs/tts/VALLE/local/prepare_librispeech_test.py --corpus_dir LibriSpeech --out_dir D

reads `<corpus_dir>/test-clean` with lhotse's LibriSpeech recipe (transcripts, and word
alignments when `<speaker>-<chapter>.alignment.txt` files from the "LibriSpeech alignments" set
lie next to the transcripts) and writes:

    D/cross_sentence.txt      text|text_prompt|audio_prompt|name: each test-clean utterance of
                              4-10 s, prompted by ANOTHER utterance of the same speaker cut to 3 s
    D/continuation.txt        text|text_prompt|audio_prompt|name: the first 3 s of the utterance
                              itself is the prompt, the rest of its words the text (needs
                              alignments to split the transcript)
    D/continuation_continual.txt  text_prompt|audio_prompt|name for utterances without alignments:
                              run with `--infer_continual true` (stage 3 keeps min(half, 3 s) of the
                              utterance as prompt and regenerates the rest; WER is not scored)
    D/prompts/<id>.wav        the 3 s prompt clips (16 kHz)
    D/ground_truth/<list>/results.jsonl  the reference recordings in stage 3's output format, so
                              `run.sh --stage 4 --eval_input_dir D/ground_truth/<list>` gives the
                              ceiling row (the paper's ground truth: WER 2.2)

A prompt is cut at the last word that ends within 3 s and its transcript is those words. Without
alignments the cut is at 3 s and `text_prompt` is the prompt utterance's whole transcript (words
past 3 s are in the text but not in the audio): a logged approximation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))

from utils.audio import load_audio, save_audio  # noqa: E402
from utils.fileio import atomic_write_text  # noqa: E402

log = logging.getLogger("prepare_librispeech_test")
SAMPLE_RATE = 16000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus_dir", required=True, type=Path, help="folder holding test-clean/")
    p.add_argument("--out_dir", required=True, type=Path)
    p.add_argument("--part", default="test-clean", help="LibriSpeech part [test-clean]")
    p.add_argument("--min_seconds", type=float, default=4.0, help="shortest target [4]")
    p.add_argument("--max_seconds", type=float, default=10.0, help="longest target [10]")
    p.add_argument("--prompt_seconds", type=float, default=3.0, help="prompt length [3]")
    return p.parse_args(argv)


def cut_point(sup, seconds: float) -> tuple[float, str, str]:
    """(end of the prompt in s, its transcript, the rest of the transcript or "" if unknown)."""
    words = [w for w in ((sup.alignment or {}).get("word") or []) if w.symbol.strip()]
    inside = [w for w in words if w.end <= seconds]
    if not inside:  # no alignment: cut at `seconds`, the transcript cannot be split
        return seconds, sup.text, ""
    rest = " ".join(w.symbol for w in words[len(inside) :])
    return inside[-1].end, " ".join(w.symbol for w in inside), rest


def prompt_clip(sup, recording, seconds: float, out_dir: Path) -> tuple[Path, str, str]:
    end, text, rest = cut_point(sup, seconds)
    path = out_dir / "prompts" / f"{sup.id}.wav"
    if not path.is_file():
        wav = load_audio(recording.sources[0].source, SAMPLE_RATE)
        save_audio(path, wav[: int(end * SAMPLE_RATE)], SAMPLE_RATE)
    return path, text, rest


def build_lists(sups, recordings, args: argparse.Namespace) -> dict[str, list[dict]]:
    """{list name: [{name, text, text_prompt, audio_prompt, reference}]} in utterance-id order."""
    by_speaker: dict[str, list] = {}
    for sup in sorted(sups, key=lambda s: s.id):
        by_speaker.setdefault(sup.speaker, []).append(sup)
    lists: dict[str, list[dict]] = {"cross_sentence": [], "continuation": [], "continual": []}
    n_unaligned = 0
    for sup in sorted(sups, key=lambda s: s.id):
        if not args.min_seconds <= sup.duration <= args.max_seconds:
            continue
        ref = recordings[sup.recording_id].sources[0].source
        own = by_speaker[sup.speaker]
        others = [s for s in own if s.id != sup.id and s.duration >= args.prompt_seconds]
        if others:  # the next utterance of the speaker (cyclic): deterministic, varied prompts
            other = next((s for s in others if s.id > sup.id), others[0])
            clip, text_prompt, _ = prompt_clip(other, recordings[other.recording_id],
                                               args.prompt_seconds, args.out_dir)  # fmt: skip
            n_unaligned += not other.alignment
            lists["cross_sentence"].append(
                {
                    "name": sup.id,
                    "text": sup.text,
                    "text_prompt": text_prompt,
                    "audio_prompt": str(clip),
                    "reference": ref,
                }  # fmt: skip
            )
        else:
            log.warning("%s: no other utterance of speaker %s of >= %.1f s: no cross-sentence "
                        "line", sup.id, sup.speaker, args.prompt_seconds)  # fmt: skip
        clip, text_prompt, rest = prompt_clip(sup, recordings[sup.recording_id],
                                              args.prompt_seconds, args.out_dir)  # fmt: skip
        entry = {"name": sup.id, "text": rest, "text_prompt": text_prompt,
                 "audio_prompt": str(clip), "reference": ref}  # fmt: skip
        if rest:
            lists["continuation"].append(entry)
        else:  # transcript not splittable: Amphion-style continual line on the whole utterance
            lists["continual"].append({**entry, "text": "", "text_prompt": sup.text,
                                       "audio_prompt": ref})  # fmt: skip
    if n_unaligned:
        log.warning("%d cross-sentence prompts have no word alignment: their text_prompt is the "
                    "whole prompt utterance's transcript (see --help)", n_unaligned)  # fmt: skip
    return lists


def write_outputs(lists: dict[str, list[dict]], out_dir: Path) -> None:
    """The test lists and, per list, the references as a stage-3 results.jsonl."""
    files = {"cross_sentence": "cross_sentence.txt", "continuation": "continuation.txt",
             "continual": "continuation_continual.txt"}  # fmt: skip
    for key, entries in lists.items():
        if key == "continual":
            lines = [f"{e['text_prompt']}|{e['audio_prompt']}|{e['name']}" for e in entries]
        else:
            lines = [
                f"{e['text']}|{e['text_prompt']}|{e['audio_prompt']}|{e['name']}" for e in entries
            ]
        atomic_write_text(out_dir / files[key], "".join(f"{x}\n" for x in lines))
        gt = []
        for e in entries:  # the reference recording is the "output"; WER against all its words
            full = e["text_prompt"] if key == "continual" else e["text"]
            if key == "continuation":
                full = f"{e['text_prompt']} {e['text']}"
            gt.append({"name": e["name"], "text": full, "text_prompt": e["text_prompt"],
                       "audio_prompt": e["audio_prompt"], "output": e["reference"]})  # fmt: skip
        folder = out_dir / "ground_truth" / files[key].removesuffix(".txt")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in gt)
        atomic_write_text(folder / "results.jsonl", text)
        log.info("%s: %d lines (+ %s)", out_dir / files[key], len(entries), folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    part_dir = args.corpus_dir / args.part
    if not part_dir.is_dir():
        log.error("%s: no such folder (expected <LibriSpeech>/%s/<speaker>/<chapter>/)", part_dir,
                  args.part)  # fmt: skip
        return 1
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(args.corpus_dir, dataset_parts=[args.part])[args.part]
    recordings = {r.id: r for r in manifests["recordings"]}
    lists = build_lists(list(manifests["supervisions"]), recordings, args)
    if not any(lists.values()):
        log.error("%s: no utterance of %.1f-%.1f s", part_dir, args.min_seconds, args.max_seconds)
        return 1
    write_outputs(lists, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
