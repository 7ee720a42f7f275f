#!/usr/bin/env python3
"""Make a tiny speech corpus in the real LibriTTS layout with espeak-ng (no download needed).

    <out_dir>/LibriTTS/SPEAKERS.txt
    <out_dir>/LibriTTS/<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<utt>_<seg>.wav   (24 kHz)
                                                  .../<utt_id>.normalized.txt, .original.txt
                                                  .../<speaker>_<chapter>.trans.tsv, .book.tsv
    <out_dir>/test_list.txt   text|text_prompt|audio_prompt lines for batch inference (dev voices)

Each espeak-ng voice variant is one "speaker"; train-clean-100 and dev-clean use different voices,
so dev-clean is a zero-shot (unseen speaker) set. Generation is deterministic for a given seed and
idempotent: a finished corpus with the same parameters is kept; the corpus is built in a temporary
folder and renamed when complete, so an interrupted run leaves nothing half-written.

Usage: python egs/tts/VALLE/local/make_mini_corpus.py --out_dir corpus/mini
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLE_RATE = 24000

# espeak-ng voice variants; each is one speaker. The first ones train, the last ones are dev.
VOICES = [
    "en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029", "en-gb+m3",
    "en-us+f4", "en-gb-x-rp", "en-us+m7", "en-gb+f2",
]  # fmt: skip

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "The rain in Spain stays mainly in the plain.",
    "Every morning the baker opened his shop before sunrise.",
    "We walked along the river until the lights of the town appeared.",
    "The old clock in the hall struck nine, and nobody moved.",
    "Please bring the letters to the office before noon.",
    "Children were playing in the garden under the tall trees.",
    "He opened the window, and a cold wind filled the room.",
    "The captain looked at the map and chose the northern route.",
    "Music drifted from the house across the quiet street.",
    "They counted the coins twice, but one was still missing.",
    "A small boat waited at the end of the wooden pier.",
    "The teacher wrote a long question on the board.",
    "Bright stars covered the sky above the sleeping village.",
    "My brother painted the fence a pale shade of green.",
    "The train was late, so we shared a pot of tea.",
    "Her voice was calm, although the news was not good.",
    "The library keeps its rarest books behind a glass door.",
    "On Sunday we climbed the hill to watch the sunset.",
    "The farmer fed the horses and then mended the gate.",
    "Nobody knew who had left the basket on the step.",
    "The doctor listened carefully and wrote a short note.",
    "Snow fell all night and covered the roads by morning.",
    "He spoke slowly, choosing every word with care.",
    "The museum opens at ten and closes at six.",
    "A gentle breeze moved the curtains back and forth.",
    "The cat slept in the sun beside the kitchen door.",
    "We will need more paper, ink, and a few good pens.",
    "The bridge was built more than a hundred years ago.",
    "She laughed, and for a moment everyone forgot the storm.",
    "The market was crowded with people buying fresh bread.",
    "His answer surprised the whole committee.",
    "The lamp flickered twice and then went dark.",
    "They planted apple trees along the southern wall.",
    "Thank you for waiting; the doctor will see you now.",
    "The ship sailed at dawn with a cargo of wool and salt.",
    "Keep the door closed, or the heat will escape.",
    "In the evening the birds returned to the old oak.",
]


def _params(args: argparse.Namespace) -> dict:
    return {
        "num_speakers": args.num_speakers,
        "utts_per_speaker": args.utts_per_speaker,
        "dev_speakers": args.dev_speakers,
        "dev_utts_per_speaker": args.dev_utts_per_speaker,
        "seed": args.seed,
        "sample_rate": SAMPLE_RATE,
        "version": 2,
    }


def _synthesize(text: str, voice: str, pitch: int, speed: int, wav: Path) -> None:
    """espeak-ng -> sox (resample to 24 kHz, 16-bit mono)."""
    espeak = subprocess.Popen(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        stdout=subprocess.PIPE,
    )
    subprocess.run(
        ["sox", "-q", "-G", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1"]
        + [str(wav)],
        stdin=espeak.stdout,
        check=True,
    )
    espeak.stdout.close()
    if espeak.wait() != 0:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} and text {text!r}")


def _make_chapter(subset_dir: Path, speaker: int, chapter: int, voice: str,
                  sentences: list[str], rng: random.Random) -> list[tuple[str, Path]]:  # fmt: skip
    chapter_dir = subset_dir / str(speaker) / str(chapter)
    chapter_dir.mkdir(parents=True)
    trans, book, made = [], [], []
    for i, text in enumerate(sentences):
        utt_id = f"{speaker}_{chapter}_{i:06d}_000000"
        wav = chapter_dir / f"{utt_id}.wav"
        _synthesize(text, voice, rng.randint(35, 65), rng.randint(150, 185), wav)
        (chapter_dir / f"{utt_id}.normalized.txt").write_text(text)
        (chapter_dir / f"{utt_id}.original.txt").write_text(text)
        trans.append(f"{utt_id}\t{text}\t{text}")
        snr = round(rng.uniform(15.0, 40.0), 2)
        book.append(f"{utt_id}\t{text}\t{text}\t{snr}")
        made.append((text, wav))
    (chapter_dir / f"{speaker}_{chapter}.trans.tsv").write_text("\n".join(trans) + "\n")
    (chapter_dir / f"{speaker}_{chapter}.book.tsv").write_text("\n".join(book) + "\n")
    return made


def make_mini_corpus(
    out_dir: str | Path,
    num_speakers: int = 4,
    utts_per_speaker: int = 8,
    dev_speakers: int = 2,
    dev_utts_per_speaker: int = 3,
    seed: int = 0,
) -> Path:
    """Build (or reuse) the corpus; returns the LibriTTS root (`<out_dir>/LibriTTS`)."""
    args = argparse.Namespace(
        num_speakers=num_speakers,
        utts_per_speaker=utts_per_speaker,
        dev_speakers=dev_speakers,
        dev_utts_per_speaker=dev_utts_per_speaker,
        seed=seed,
    )
    params = _params(args)
    out_dir = Path(out_dir)
    root = out_dir / "LibriTTS"
    stamp = out_dir / "corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params and root.is_dir():
        return root
    if num_speakers + dev_speakers > len(VOICES):
        raise ValueError(f"at most {len(VOICES)} speakers in all (one per espeak-ng voice)")
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: apt-get install espeak-ng sox (or make install)")

    rng = random.Random(seed)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_root = tmp / "LibriTTS"
    speakers_txt = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    dev_made: list[tuple[str, Path]] = []
    train_sentences: list[str] = []
    plan = [("train-clean-100", 0, num_speakers, utts_per_speaker)]
    plan.append(("dev-clean", num_speakers, dev_speakers, dev_utts_per_speaker))
    for subset, first_voice, count, utts in plan:
        for k in range(count):
            speaker = 1000 + first_voice + k
            voice = VOICES[first_voice + k]
            sentences = rng.sample(SENTENCES, utts) if utts <= len(SENTENCES) else SENTENCES
            made = _make_chapter(tmp_root / subset, speaker, 2000 + speaker, voice, sentences, rng)
            sex = "F" if "+f" in voice else "M"
            speakers_txt.append(f"{speaker} | {sex} | {subset} | 1.00 | espeak-ng {voice}")
            if subset == "dev-clean":
                dev_made.extend(made)
            else:
                train_sentences.extend(text for text, _ in made)
    (tmp_root / "SPEAKERS.txt").write_text("\n".join(speakers_txt) + "\n")
    _write_test_list(tmp, dev_made, sorted(set(train_sentences)), rng)
    (tmp / "corpus.json").write_text(json.dumps(params, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return root


def _write_test_list(
    out_dir: Path, dev_made: list[tuple[str, Path]], targets: list[str], rng: random.Random
) -> None:
    """text|text_prompt|audio_prompt (paths relative to the list), one line per dev prompt.

    Target texts come from the training sentences, so every phone is in the phone table that
    stage 1 builds from this corpus; the prompts are dev-clean voices (unseen speakers)."""
    lines = ["# text|text_prompt|audio_prompt  (made by make_mini_corpus.py)"]
    for text_prompt, wav in dev_made:
        target = rng.choice(targets)
        rel = wav.relative_to(out_dir)
        lines.append(f"{target}|{text_prompt}|{rel}")
    (out_dir / "test_list.txt").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True, help="output folder (LibriTTS/ goes inside)")
    parser.add_argument("--num_speakers", type=int, default=4, help="train-clean-100 speakers")
    parser.add_argument("--utts_per_speaker", type=int, default=8, help="train utterances each")
    parser.add_argument("--dev_speakers", type=int, default=2, help="dev-clean speakers (unseen)")
    parser.add_argument("--dev_utts_per_speaker", type=int, default=3, help="dev utterances each")
    parser.add_argument("--seed", type=int, default=0, help="voice pitch/speed/sentence choice")
    args = parser.parse_args()
    root = make_mini_corpus(
        args.out_dir,
        args.num_speakers,
        args.utts_per_speaker,
        args.dev_speakers,
        args.dev_utts_per_speaker,
        args.seed,
    )
    print(f"mini corpus ready: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
