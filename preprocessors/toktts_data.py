"""TokTTS recipe stage 1: corpora -> lhotse cuts with the first seconds as 2-codebook EnCodec codes.

Reuses the VALL-E stage 1's public pieces: the corpus readers (`preprocessors.corpora`: lhotse's
LJSpeech recipe, the `path|text|speaker` custom list, bad files and lines rejected with a reason),
the corpus roots / file signature and the codec set-up (`preprocessors.pipeline`: official, local
or seeded random-init EnCodec, k-means-initialised on the training audio and saved). TokTTS's own:

1. filters: empty transcript (after the optional normaliser, `text.normalize`), too short / long;
2. copies: every train utterance `augmentation_factor` times. Copy 0 is the original; copy k >= 1
   is perturbed: speed factor s ~ U(augment_speed) in steps of 1/120 (resampled as if recorded
   at 24000 * s Hz: tempo and pitch x s, like sox `speed`) and gain g ~ U(augment_gain_db) dB
   (then clipped to [-1, 1]), drawn from a generator seeded by (augment_seed, cut id, k); its
   cut id is `<id>_aug<k>` and `cut.custom["augmentation"] = {"copy", "speed", "gain_db"}`.
   valid / test cuts are never copied;
3. codes: the first `model.max_audio_seconds` of each copy (a whole number of 320-sample frames),
   with an optional linear fade-out of `fade_out_seconds` where the cap cuts the audio, encoded
   with EnCodec 24 kHz at `codec_bandwidth` (1.5 kbps = 2 codebooks), stored exactly as int16
   (lhotse `TemporalArray` in `cut.codes`, frame_shift 320 / 24000 s); the cut's duration is the
   codes' span (as VALL-E's `codec_span`); `recording` and `supervisions` keep the full
   utterance and its whole text;
4. shards of `shard_size` copies (crc32 of the utterance id, so a copy count change keeps the
   other shards), each written atomically with a `.done` marker last: a killed run keeps them;
5. merge: `<dataset>/cuts_<split>.jsonl.gz`, `<dataset>/rejected.jsonl` (id, path, reason),
   `<dataset>/summary.json`, `chars.json` (the `CharTable` of every kept text), `config.json`
   and `stage1.done.json` with the fingerprint of the settings and corpus files: a re-run with
   the same ones is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, NumpyHdf5Writer
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from models.codec.encodec import HOP, SAMPLE_RATE, CodecTokenizer
from preprocessors.corpora import read_corpus, reject
from preprocessors.pipeline import codec_settings, corpus_roots, corpus_signature, prepare_codec
from preprocessors.shards import DONE_FILE, finish_stage1, stable_shards, write_shard_files
from text.chars import CharTable
from text.normalize import normalize_text
from utils.audio import AudioError, load_audio, resample
from utils.config_loader import resolve_path
from utils.fileio import atomic_path, atomic_write_text
from utils.toktts_config import TokTTSRecipeConfig

log = logging.getLogger("preprocess")
FORMAT = "codectts-toktts-stage1-1"  # bump when the codes of the same settings change
CHARS_FILE = "chars.json"
TOKEN_DIR = "acoustic_tokens"
ENCODE_BATCH = 32  # clips per codec call (all at most max_audio_seconds long)


class Stage1Error(RuntimeError):
    """Stage 1 cannot produce usable output; the message says why and what to do."""


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Copy:
    """One copy of one utterance to encode (copy 0 = the original audio)."""

    cut: Cut  # the utterance
    copy: int
    speed: float
    gain_db: float

    @property
    def id(self) -> str:
        return self.cut.id if self.copy == 0 else f"{self.cut.id}_aug{self.copy}"


def make_copies(cut: Cut, n: int, pcfg) -> list[Copy]:
    """Copy 0 unperturbed, copies 1..n-1 with their own (speed, gain) draw (module doc)."""
    copies = [Copy(cut, 0, 1.0, 0.0)]
    for k in range(1, n):
        rng = random.Random(f"{pcfg.augment_seed}\0{cut.id}\0{k}")
        # on a 200 Hz grid of the source rate (speed steps of 1/120): a rate ratio with a large
        # gcd keeps the resampler's kernel small (25049 -> 24000 Hz takes ~60 s per clip)
        speed = round(SAMPLE_RATE * rng.uniform(*pcfg.augment_speed) / 200) * 200 / SAMPLE_RATE
        copies.append(Copy(cut, k, speed, round(rng.uniform(*pcfg.augment_gain_db), 2)))
    return copies


def clip_audio(wav: torch.Tensor, item: Copy, max_frames: int, fade_seconds: float) -> torch.Tensor:
    """The first max_frames * 320 samples of the (perturbed) 24 kHz copy, faded out at the cap."""
    samples = max_frames * HOP
    if item.speed != 1.0:  # resample only what the clip needs (+ the resampler's context)
        needed = math.ceil(samples * item.speed) + 64
        wav = resample(wav[:needed], round(SAMPLE_RATE * item.speed), SAMPLE_RATE)
    cut = len(wav) > samples
    wav = (wav[:samples] * 10 ** (item.gain_db / 20)).clamp(-1.0, 1.0)
    fade = round(fade_seconds * SAMPLE_RATE)
    if cut and fade > 0:  # only where the cap cuts the speech: an ending utterance ends itself
        wav = wav.clone()
        wav[-fade:] *= torch.linspace(1.0, 0.0, fade)
    return wav


@dataclass
class Shard:
    dataset: str
    name: str  # shard-<index>-<fingerprint>
    out_dir: Path
    items: list[Copy]

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"


def plan_shards(dataset: str, kept: dict[str, list], pcfg, settings: dict, out: Path) -> list:
    """All copies of an utterance share its shard, crc32(id) mod S (S from the copy count)."""
    items = [
        c
        for split, cuts in kept.items()
        for cut in cuts
        for c in make_copies(cut, pcfg.augmentation_factor if split == "train" else 1, pcfg)
    ]
    shards = []
    members = stable_shards(items, len(items), pcfg.shard_size, key=attrgetter("cut.id"))
    for index, group in members.items():
        identity = [(c.id, c.cut.recording.sources[0].source, c.speed, c.gain_db) for c in group]
        fp = _sha([FORMAT, settings, identity])[:12]
        shards.append(Shard(dataset, f"shard-{index:05d}-{fp}", out / dataset / TOKEN_DIR, group))
    return shards


def _load(item: Copy, rejected: list[dict]) -> torch.Tensor | None:
    path = item.cut.recording.sources[0].source
    try:
        return load_audio(path, SAMPLE_RATE)
    except AudioError as e:
        rejected.append(reject(item.id, path, "unreadable_audio", e.reason))
        return None


def encode_shard(shard: Shard, codec: CodecTokenizer, max_frames: int, fade: float) -> None:
    """Encode one shard: its .h5 codes, .jsonl.gz cuts, .rejected.jsonl, then .done (last)."""
    shard.out_dir.mkdir(parents=True, exist_ok=True)
    h5_tmp = shard.out_dir / f".{shard.name}.tmp-{uuid.uuid4().hex[:8]}.h5"
    rejected: list[dict] = []
    out_cuts = []
    with NumpyHdf5Writer(h5_tmp, mode="w") as writer:
        for start in range(0, len(shard.items), ENCODE_BATCH):
            batch = shard.items[start : start + ENCODE_BATCH]
            wavs = {i: _load(item, rejected) for i, item in enumerate(batch)}
            good = [i for i, w in wavs.items() if w is not None]
            clips = [clip_audio(wavs[i], batch[i], max_frames, fade) for i in good]
            for i, codes in zip(good, codec.encode(clips), strict=True):
                item = batch[i]
                arr = writer.store_array(
                    item.id,
                    codes.numpy().astype(np.int16),
                    frame_shift=HOP / SAMPLE_RATE,
                    temporal_dim=0,
                )
                cut = item.cut
                custom = {
                    "codes": arr,
                    "augmentation": {
                        "copy": item.copy,
                        "speed": item.speed,
                        "gain_db": item.gain_db,
                    },
                }
                out_cuts.append(
                    fastcopy(
                        cut,
                        id=item.id,
                        duration=arr.duration,
                        custom={**(cut.custom or {}), **custom},
                    )
                )
    h5_tmp.replace(shard.path(".h5"))
    for cut in out_cuts:  # the codes now live in the final file
        cut.codes = fastcopy(
            cut.codes, array=fastcopy(cut.codes.array, storage_path=str(shard.path(".h5")))
        )
    write_shard_files(shard.out_dir, shard.name, out_cuts, rejected, {"encoded": len(out_cuts)})


def filter_texts(splits: dict[str, CutSet], pcfg) -> tuple[dict[str, list], list[dict]]:
    """Kept cuts per split (supervision text normalised when asked) and the rejections."""
    kept: dict[str, list] = {}
    rejected: list[dict] = []
    for split, cuts in splits.items():
        kept[split] = []
        for cut in cuts:
            path = cut.recording.sources[0].source
            text = " ".join(s.text or "" for s in cut.supervisions).strip()
            if pcfg.normalize_text:
                text = normalize_text(text)
            if not cut.supervisions or not text:
                rejected.append(reject(cut.id, path, "empty_transcript"))
            elif cut.duration < pcfg.min_duration:
                rejected.append(reject(cut.id, path, "too_short", f"{cut.duration:.2f} s"))
            elif cut.duration > pcfg.max_duration:
                rejected.append(reject(cut.id, path, "too_long", f"{cut.duration:.2f} s"))
            else:
                sup = fastcopy(cut.supervisions[0], text=text)
                kept[split].append(fastcopy(cut, supervisions=[sup]))
    return kept, rejected


def merge(dataset: str, shards: list[Shard], rejected: list[dict], kept: dict, out: Path) -> dict:
    """The split manifests, rejected.jsonl and summary.json of one corpus."""
    work = out / dataset
    encoded = {}
    for shard in shards:
        encoded.update((c.id, c) for c in CutSet.from_file(shard.path(".jsonl.gz")))
        rejected += [json.loads(x) for x in shard.path(".rejected.jsonl").read_text().splitlines()]
    summary: dict = {"splits": {}}
    for split, cuts in kept.items():
        ids = {c.id for c in cuts}
        final = sorted((c for c in encoded.values() if c.recording_id in ids), key=lambda c: c.id)
        with atomic_path(work / f"cuts_{split}.jsonl.gz") as tmp:
            CutSet.from_cuts(final).to_file(tmp)
        originals = [c for c in final if c.custom["augmentation"]["copy"] == 0]
        summary["splits"][split] = {
            "utterances": len(originals),
            "copies": len(final),
            "code_seconds": round(sum(c.duration for c in final), 2),
        }
    for stale in work.glob("cuts_*.jsonl.gz"):  # a split that no longer exists
        if stale.name not in {f"cuts_{s}.jsonl.gz" for s in kept}:
            stale.unlink()
    current = {s.name for s in shards}
    for f in (work / TOKEN_DIR).iterdir():  # shards of older settings or killed runs
        if f.is_file() and not any(f.name.startswith(n + ".") for n in current):
            f.unlink()
    rejected.sort(key=lambda r: (r["reason"], r["id"]))
    atomic_write_text(
        work / "rejected.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected)
    )
    summary["rejected"] = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    atomic_write_text(work / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def write_chars(out: Path, kept: dict[str, dict[str, list]], vocab_size: int) -> Path:
    """chars.json: every character of every kept text (models.tts.toktts.model.CharTable)."""
    texts = [c.supervisions[0].text for s in kept.values() for cuts in s.values() for c in cuts]
    chars = CharTable.from_texts(texts)
    if len(chars) > vocab_size:
        raise Stage1Error(
            f"the texts hold {len(chars) - 1} distinct characters, model.vocab_size is "
            f"{vocab_size} (characters + padding): raise model.vocab_size"
        )
    return chars.save(out / CHARS_FILE)


def log_summary(summaries: dict[str, dict]) -> None:
    for name, s in summaries.items():
        kept = "; ".join(f"{split} {v['utterances']} utterances ({v['copies']} copies)"
                         for split, v in s["splits"].items())  # fmt: skip
        log.info("%s: %s; rejected %d %s -> %s/rejected.jsonl", name, kept,
                 sum(s["rejected"].values()), s["rejected"] or "", name)  # fmt: skip


def read_corpora(cfg: TokTTSRecipeConfig, roots: dict, out: Path) -> tuple[dict, dict]:
    """(kept cuts per corpus and split, rejections per corpus); an emptied corpus is an error
    (its rejected.jsonl written first, so the user can see why)."""
    kept, rejected = {}, {}
    for name, root in roots.items():
        log.info("%s: reading manifests from %s", name, root)
        corpus = read_corpus(name, root, cfg.preprocess, out / name)
        kept[name], dropped = filter_texts(corpus.splits, cfg.preprocess)
        rejected[name] = corpus.rejected + dropped
        if not kept[name].get("train"):
            lines = "".join(json.dumps(r) + "\n" for r in rejected[name])
            atomic_write_text(out / name / "rejected.jsonl", lines)
            raise Stage1Error(
                f"{name}: no usable training utterance ({len(rejected[name])} "
                f"rejected, see {out / name / 'rejected.jsonl'})"
            )
    return kept, rejected


def run_stage1(cfg: TokTTSRecipeConfig, device: str = "cpu") -> dict:
    """Run (or resume, or confirm up to date) TokTTS stage 1; the per-corpus summaries."""
    start, pcfg = time.time(), cfg.preprocess
    out = resolve_path(pcfg.processed_dir)
    roots = corpus_roots(cfg)
    settings = {
        "format": FORMAT,
        "preprocess": vars(pcfg),
        "codec": codec_settings(pcfg),
        "max_frames": cfg.model.max_frames,
        "datasets": {n: str(r) for n, r in roots.items()},
    }
    fingerprint = _sha([settings, corpus_signature(cfg, roots)])
    done_path = out / DONE_FILE
    if done_path.is_file() and json.loads(done_path.read_text()).get("fingerprint") == fingerprint:
        log.info("Stage 1 is already complete for these settings and corpus files (%s)", done_path)
        log_summary(json.loads(done_path.read_text())["summaries"])
        return json.loads(done_path.read_text())["summaries"]
    done_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    kept, rejected = read_corpora(cfg, roots, out)
    codec = prepare_codec(out, cfg, kept, device)
    shard_settings = {
        "codec": codec.fingerprint(),
        "max_frames": cfg.model.max_frames,
        "fade_out_seconds": pcfg.fade_out_seconds,
    }
    summaries = {}
    for name in roots:
        shards = plan_shards(name, kept[name], pcfg, shard_settings, out)
        todo = [s for s in shards if not s.path(".done").is_file()]
        log.info("%s: %d shards, %d to encode", name, len(shards), len(todo))
        for shard in todo:
            encode_shard(shard, codec, cfg.model.max_frames, pcfg.fade_out_seconds)
        summaries[name] = merge(name, shards, rejected[name], kept[name], out)
    write_chars(out, kept, cfg.model.vocab_size)
    log_summary(summaries)
    record = {"format": FORMAT, "fingerprint": fingerprint, "summaries": summaries}
    finish_stage1(cfg, out, record, start, log)
    return summaries
