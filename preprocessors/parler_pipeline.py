"""Parler-TTS recipe stage 1: corpora -> lhotse cuts with DAC codes, descriptions and token ids.

Steps (the output layout is the "Parler-TTS stage-1 output contract" of docs/ARCHITECTURE.md):

1. manifests (`preprocessors.parler_corpora`): custom list, LibriTTS(-R), Expresso; unusable
   files and lines are rejected with the reason, never fatal;
2. filters: empty transcript, too short / too long, no description while `annotate = "none"`;
3. codec: the DAC inside the `model.pretrained` folder (`preprocess.codec = ""`), a DacModel
   folder / hub id, or a seeded random-init one (labelled), saved in `<processed_dir>/codec/`;
4. shards (`preprocessors.parler_tokens`): exact DAC codes, and the annotation measures of the
   utterances that need a description, in this process or in worker processes;
5. merge: descriptions of the measured utterances (`preprocessors.annotate.describe`),
   description / transcript token ids with the folder's tokenizer,
   `<dataset>/cuts_<split>.jsonl.gz`, `rejected.jsonl`, `summary.json`, `config.json`,
   `model_source.json`, and last `stage1.done.json` (fingerprint of all the inputs).

A re-run with the same config, corpus files, codec and tokenizer is a no-op. A killed run keeps
its finished shards; every manifest is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from lhotse import CutSet
from lhotse.utils import fastcopy

from models.codec.dac import DacCodec
from models.codec.encodec import codec_span, file_sha256
from preprocessors.annotate import Measures, describe, speaker_pitch_words
from preprocessors.corpora import Corpus, CorpusError, read_libritts, reject
from preprocessors.parler_corpora import (
    corpus_files,
    corpus_settings,
    read_custom_list,
    read_expresso,
)
from preprocessors.parler_tokens import (
    MEASURE_FORMAT,
    TOKEN_DIR,
    ParlerShard,
    run_shard,
    worker_init,
    worker_run,
)
from preprocessors.shards import DONE_FILE, finish_stage1, run_pool, stable_shards
from text.g2p import g2p_version
from utils.config_loader import resolve_path
from utils.config_parler import ParlerConfig, corpus_kind
from utils.fileio import atomic_path, atomic_write_text

log = logging.getLogger("preprocess")
STAGE1_FORMAT = "codectts-parler-stage1-1"
GENDER_WORDS = {"F": "A woman", "M": "A man"}  # LibriTTS speakers (SPEAKERS.txt) have no names


class ParlerStageError(RuntimeError):
    """Stage 1 cannot produce usable output; the message says why and what to do."""


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ inputs
def corpus_roots(cfg: ParlerConfig) -> dict[str, Path]:
    """{corpus name: resolved path}; a missing path fails before any heavy work."""
    roots = {}
    for name in cfg.dataset:
        root = resolve_path(cfg.dataset_path[name])
        want_file = corpus_kind(name) == "custom"
        if (want_file and not root.is_file()) or (not want_file and not root.is_dir()):
            what = "custom corpus list file" if want_file else "corpus folder"
            raise CorpusError(f"dataset_path.{name} = {root}: no such {what}")
        roots[name] = root
    return roots


def folder_audio_settings(folder: Path) -> dict:
    """What the model folder's config.json says about the codes it models."""
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
        dec, enc = hf["decoder"], hf["audio_encoder"]
        return {"num_codebooks": int(dec["num_codebooks"]),
                "codebook_size": int(enc.get("codebook_size", 1024)),
                "sampling_rate": int(enc["sampling_rate"])}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ParlerStageError(
            f"{path}: not a Parler-TTS config ({type(e).__name__}: {e})"
        ) from None


def read_corpus(name: str, root: Path, pcfg, work: Path) -> Corpus:
    kind = corpus_kind(name)
    if kind == "custom":
        return read_custom_list(root, pcfg)
    if kind == "expresso":
        return read_expresso(root, pcfg)
    corpus = read_libritts(root, corpus_settings(pcfg), work)
    genders = libritts_genders(root)
    for split, cuts in corpus.splits.items():
        corpus.splits[split] = CutSet.from_cuts(
            fastcopy(c, supervisions=[fastcopy(s, gender=s.gender or genders.get(s.speaker))
                                      for s in c.supervisions])
            .with_custom("description", None).with_custom("style", None)
            for c in cuts
        )  # fmt: skip
    return corpus


def libritts_genders(root: Path) -> dict[str, str]:
    """{speaker id: "F" | "M"} from LibriTTS' SPEAKERS.txt (`;ID |SEX| SUBSET |MINUTES| NAME`)."""
    path = root / "SPEAKERS.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    fields = [[f.strip() for f in line.split("|")] for line in lines if not line.startswith(";")]
    return {f[0]: f[1] for f in fields if len(f) >= 2 and f[1] in GENDER_WORDS}


# ------------------------------------------------------------------ codec
def build_codec(pcfg, folder: Path, num_codebooks: int) -> DacCodec:
    if pcfg.codec == "":
        return DacCodec.from_parler_checkpoint(folder, num_codebooks)
    if pcfg.codec == "random_init":
        return DacCodec.random_init(num_codebooks=num_codebooks, seed=pcfg.codec_seed)
    return DacCodec.pretrained(pcfg.codec, num_codebooks)


def prepare_codec(out: Path, pcfg, folder: Path, device: str) -> tuple[DacCodec, str]:
    """The codec of these settings and its fingerprint; saved in out/codec unless a codec with
    this fingerprint is already there."""
    audio = folder_audio_settings(folder)
    codec = build_codec(pcfg, folder, audio["num_codebooks"])
    if (codec.codebook_size, codec.sample_rate) != (audio["codebook_size"], audio["sampling_rate"]):
        raise ParlerStageError(
            f"codec {pcfg.codec or folder}: {codec.codebook_size} codes at {codec.sample_rate} Hz, "
            f"but {folder / 'config.json'} models {audio['codebook_size']} at "
            f"{audio['sampling_rate']} Hz"
        )
    fingerprint = codec.fingerprint()
    meta = out / "codec" / "codec.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint):
        codec.save(out / "codec")
        info = {"source": codec.source, "random_init": codec.is_random_init,
                "fingerprint": fingerprint, "num_codebooks": codec.num_codebooks,
                "sample_rate": codec.sample_rate, "hop_length": codec.hop_length}  # fmt: skip
        atomic_write_text(meta, json.dumps(info, indent=2) + "\n")
    if codec.is_random_init:
        log.warning("!" * 100)
        log.warning("RANDOM-INIT DAC codec (%s): codes and audio are MEANINGLESS", codec.source)
        log.warning("!" * 100)
    return codec.to(device), fingerprint


# ------------------------------------------------------------------ filters + shards
def select(corpus: Corpus, pcfg) -> tuple[dict[str, list], list[dict]]:
    """Kept cuts per split (filters of step 2) and the rejections."""
    kept: dict[str, list] = {}
    rejected = list(corpus.rejected)
    for split, cuts in corpus.splits.items():
        kept[split] = []
        for cut in cuts:
            path = cut.recording.sources[0].source
            text = " ".join(s.text or "" for s in cut.supervisions).strip()
            if not text:
                rejected.append(reject(cut.id, path, "empty_transcript"))
            elif cut.duration < pcfg.min_duration:
                rejected.append(reject(cut.id, path, "too_short", f"{cut.duration:.2f} s"))
            elif cut.duration > pcfg.max_duration:
                rejected.append(reject(cut.id, path, "too_long", f"{cut.duration:.2f} s"))
            elif pcfg.annotate == "none" and not cut.custom.get("description"):
                rejected.append(reject(cut.id, path, "no_description", "preprocess.annotate"))
            else:
                kept[split].append(cut)
    return kept, rejected


def plan_shards(name: str, kept: dict, candidates: int, out: Path, codec_fp: str, pcfg) -> list:
    """Stable shards (crc32(id) mod S, S from the corpus size before filtering)."""
    cuts_of = (c for cuts in kept.values() for c in cuts)
    tasks = []
    for index, cuts in stable_shards(cuts_of, candidates, pcfg.shard_size).items():
        measured = [pcfg.annotate == "all" or not c.custom.get("description") for c in cuts]
        identity = [(c.id, c.recording.sources[0].source, c.recording.num_samples, m)
                    for c, m in zip(cuts, measured, strict=True)]  # fmt: skip
        fp = _sha([codec_fp, MEASURE_FORMAT, pcfg.phone_language, identity])[:12]
        tasks.append(ParlerShard(name, index, f"shard-{index:05d}-{fp}",
                                 str(out / name / TOKEN_DIR), [c.to_dict() for c in cuts],
                                 measured, pcfg.phone_language))  # fmt: skip
    return tasks


def run_shards(tasks: list, codec: DacCodec, out: Path, devices: list[str], workers: int) -> None:
    todo = [t for t in tasks if not t.done_path.is_file()]
    if len(todo) < len(tasks):
        log.info(
            "DAC tokens: %d of %d shards already done (kept)", len(tasks) - len(todo), len(tasks)
        )
    if not todo:
        return
    start, seconds = time.time(), sum(t.seconds for t in todo)
    processes = workers * len(devices)
    if processes == 1:
        for task in todo:
            run_shard(task, codec)
    else:
        init = (str(out / "codec"), devices)
        for _ in run_pool(worker_init, init, worker_run, todo, processes):
            pass
    log.info("DAC tokens: %.1f s of audio in %.1f s", seconds, time.time() - start)


# ------------------------------------------------------------------ merge
def speaker_phrase(cut, kind: str) -> str | None:
    """Who speaks, for the description: the corpus' speaker name (custom, Expresso), else the
    LibriTTS gender ("A woman" / "A man"), else None ("A speaker")."""
    sup = cut.supervisions[0]
    if kind == "libritts":
        return GENDER_WORDS.get(sup.gender or "")
    return sup.speaker


def write_descriptions(cuts: list, kind: str, pcfg) -> list:
    """Cuts with measures get the description of the documented template (module annotate)."""
    pitch_words: dict = {}
    if pcfg.annotation_pitch == "speaker_corpus":
        by_speaker: dict[str, list[float]] = {}
        for c in cuts:
            if c.custom.get("annotation"):
                by_speaker.setdefault(c.supervisions[0].speaker, []).append(
                    c.custom["annotation"]["pitch_hz"]
                )
        medians = {s: statistics.median(v) for s, v in by_speaker.items()}
        pitch_words = speaker_pitch_words(medians) if medians else {}
    out = []
    for c in cuts:
        m = c.custom.get("annotation")
        if m:
            text = describe(Measures(**m), speaker_phrase(c, kind), c.custom.get("style"),
                            pitch_words.get(c.supervisions[0].speaker))  # fmt: skip
            c = c.with_custom("description", text)
        out.append(c)
    return out


def final_cut(cut, tokenizer):
    """The contract's cut: codes span, transcript and description ids, annotation or None."""
    transcript = " ".join(s.text or "" for s in cut.supervisions).strip()
    cut = codec_span(cut)
    custom = dict(cut.custom)
    custom["description_ids"] = tokenizer(custom["description"]).input_ids
    custom["prompt_ids"] = tokenizer(transcript).input_ids
    custom.setdefault("annotation", None)
    custom.setdefault("style", None)
    cut.custom = custom
    return cut


def merge_dataset(name: str, kept: dict, tasks: list, rejected: list, out: Path, pcfg, tokenizer):
    work = out / name
    encoded = {}
    for task in tasks:
        token_dir = Path(task.out_dir)
        encoded.update((c.id, c) for c in CutSet.from_file(token_dir / f"{task.name}.jsonl.gz"))
        for line in (token_dir / f"{task.name}.rejected.jsonl").read_text().splitlines():
            rejected.append(json.loads(line))
    kind = corpus_kind(name)
    summary: dict = {"splits": {}, "rejected": {}}
    for split, cuts in kept.items():
        done = write_descriptions([encoded[c.id] for c in cuts if c.id in encoded], kind, pcfg)
        final = [final_cut(c, tokenizer) for c in sorted(done, key=lambda c: c.id)]
        with atomic_path(work / f"cuts_{split}.jsonl.gz") as tmp:
            CutSet.from_cuts(final).to_file(tmp)
        summary["splits"][split] = {
            "utterances": len(final),
            "hours": round(sum(c.duration for c in final) / 3600, 4),
            "speakers": len({c.supervisions[0].speaker for c in final}),
            "annotated": sum(1 for c in final if c.custom["annotation"]),
        }
    for stale in work.glob("cuts_*.jsonl.gz"):  # a split that no longer exists
        if stale.name not in {f"cuts_{s}.jsonl.gz" for s in kept}:
            stale.unlink()
    rejected.sort(key=lambda r: (r["reason"], r["id"]))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected)
    atomic_write_text(work / "rejected.jsonl", lines)
    summary["rejected"] = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    current = {t.name for t in tasks}
    for f in (work / TOKEN_DIR).iterdir() if (work / TOKEN_DIR).is_dir() else []:
        if f.is_file() and not any(f.name.startswith(n + ".") for n in current):
            f.unlink()  # older settings or a killed run: no longer referenced
    atomic_write_text(work / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------ the stage
def fingerprint(cfg: ParlerConfig, roots: dict, folder: Path, codec_fp: str) -> str:
    """Everything the outputs depend on: settings (not the worker count), corpus files (names,
    sizes, mtimes), the codec's weights, the tokenizer files, the G2P version."""
    files = []
    for name, root in roots.items():
        for f in corpus_files(corpus_kind(name), root, cfg.preprocess):
            try:
                st = f.stat()
                files.append((str(f), st.st_size, st.st_mtime_ns))
            except OSError:
                files.append((str(f), "missing"))
    tokenizer = [file_sha256(folder / n) for n in ("tokenizer.json", "tokenizer_config.json")
                 if (folder / n).is_file()]  # fmt: skip
    preprocess = {k: v for k, v in asdict(cfg.preprocess).items() if k != "num_workers"}
    settings = {"format": STAGE1_FORMAT, "measures": MEASURE_FORMAT, "preprocess": preprocess,
                "datasets": roots, "codec": codec_fp, "tokenizer": tokenizer,
                "g2p": g2p_version(cfg.preprocess.phone_language)}  # fmt: skip
    return _sha([settings, files])


def _finished(out: Path, fp: str) -> dict | None:
    done = out / DONE_FILE
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    needed = [out / "config.json", out / "model_source.json", out / "codec" / "codec.json"]
    if record.get("fingerprint") == fp and all(p.is_file() for p in needed):
        return record["summaries"]
    log.info("Stage 1 settings, corpus files, codec or tokenizer changed: updating")
    return None


def print_summary(summaries: dict) -> None:
    for name, s in summaries.items():
        for split, v in s["splits"].items():
            log.info("%s/%s: kept %d utterances (%d annotated), %.3f h, %d speakers", name,
                     split, v["utterances"], v["annotated"], v["hours"], v["speakers"])  # fmt: skip
        detail = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "none"
        log.info("%s: rejected %d (%s) -> %s/rejected.jsonl", name, sum(s["rejected"].values()),
                 detail, name)  # fmt: skip


def run_parler_stage1(
    cfg: ParlerConfig, folder: Path, tokenizer, devices: list[str], num_workers: int
) -> dict:
    """Run (or resume, or confirm up to date) stage 1; returns the per-dataset summaries.

    `folder` is the resolved `model.pretrained` folder, `tokenizer` its tokenizer (callable:
    text -> object with `input_ids`), given by the caller (bins/tts/parler_preprocess.py)."""
    start, pcfg = time.time(), cfg.preprocess
    out = resolve_path(pcfg.processed_dir)
    roots = corpus_roots(cfg)
    out.mkdir(parents=True, exist_ok=True)
    codec, codec_fp = prepare_codec(out, pcfg, folder, devices[0])
    fp = fingerprint(cfg, roots, folder, codec_fp)
    if (summaries := _finished(out, fp)) is not None:
        log.info(
            "Stage 1 is already complete for these inputs: nothing to do (%s)", out / DONE_FILE
        )
        print_summary(summaries)
        return summaries
    (out / DONE_FILE).unlink(missing_ok=True)
    kept, rejected, tasks = {}, {}, {}
    for name, root in roots.items():
        log.info("%s: reading manifests from %s", name, root)
        corpus = read_corpus(name, root, pcfg, out / name)
        candidates = sum(len(c) for c in corpus.splits.values()) + len(corpus.rejected)
        kept[name], rejected[name] = select(corpus, pcfg)
        tasks[name] = plan_shards(name, kept[name], candidates, out, codec_fp, pcfg)
    run_shards([t for ts in tasks.values() for t in ts], codec, out, devices, num_workers)
    summaries = {name: merge_dataset(name, kept[name], tasks[name], rejected[name], out, pcfg,
                                     tokenizer) for name in roots}  # fmt: skip
    for name, s in summaries.items():
        if not any(v["utterances"] for v in s["splits"].values()):
            raise ParlerStageError(f"{name}: nothing usable left (see {out / name}/rejected.jsonl)")
    source = {"pretrained": cfg.model.pretrained, "folder": str(folder)}
    atomic_write_text(out / "model_source.json", json.dumps(source, indent=2) + "\n")
    print_summary(summaries)
    record = {"format": STAGE1_FORMAT, "fingerprint": fp, "summaries": summaries}
    finish_stage1(cfg, out, record, start, log)
    return summaries
