"""Recipe stage 1: corpora -> lhotse cuts with phones and exact EnCodec codes.

Steps (see docs/ARCHITECTURE.md for the output layout):

1. manifests: each corpus is read with lhotse (`preprocessors.corpora`); unusable files and lines
   are rejected, not fatal;
2. filters + G2P: empty transcript, too short / too long, text without phones, phones missing
   from a given symbol table (`existing_symbols_dict`) -> rejected with the reason;
3. codec: the official / local-checkpoint / random-init EnCodec (random init: seeded k-means on
   the first `codec_init_seconds` of training audio), saved in `<processed_dir>/codec/`;
4. tokenization in shards (`preprocessors.tokenize`), in this process or in `num_workers` worker
   processes per device, each writing its own shard files;
5. merge (`preprocessors.merge`): per split one manifest per shard,
   `<dataset>/cuts_<split>.NNNNNN.jsonl.gz`, and its index `cuts_<split>.index.json`
   (`utils.cut_shards`; phones in `cut.custom["phones"]`, codes in `cut.codes`, the cut's
   duration spanning all its codec frames: `encodec.codec_span`), `<dataset>/rejected.jsonl`,
   `<dataset>/summary.json`, `symbols.dict`, `config.json`, and `stage1.done.json` holding the
   fingerprint of everything that produced them.

Split over machines (`nj` > 1): every job reads the corpora, runs G2P and plans the same shards
(all deterministic), then job `job_index` encodes only its own shards (`merge.job_of`) and stops;
a run with `nj` > 1 and no job index is the merge: it encodes nothing, checks that every shard is
complete (else names the missing ones and their jobs) and merges. `nj` = 1 does everything.

Re-running with the same config and corpus files is a no-op (fingerprint match). A killed run
keeps its finished shards (each carries the fingerprint of the codec and of its cut list) and
every manifest is written to a temporary name and renamed, so nothing truncated is ever left
under a final name. A changed setting changes the fingerprints of what it affects: a new codec
redoes all shards, new filters only the shards whose membership changed, new G2P settings only
the (cheap) phones and the merge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from lhotse import CutSet
from tqdm import tqdm

from models.codec.encodec import (
    OFFICIAL_NAME,
    RANDOM_INIT_WARNING,
    CodecTokenizer,
    file_sha256,
)
from preprocessors.corpora import check_corpus_path, corpus_files, read_corpus, reject
from preprocessors.merge import (
    StageError,
    check_shards_complete,
    job_of,
    merge_dataset,
    write_symbols,
)
from preprocessors.shards import DONE_FILE, finish_stage1, run_pool, stable_shards
from preprocessors.tokenize import ShardTask, run_shard, worker_init, worker_run
from text.g2p import g2p_version, has_speech_phones, phonemize
from text.symbol_table import TextTokenizer
from utils.audio import load_audio
from utils.config import Config, PreprocessConfig, resolve_path
from utils.fileio import atomic_write_text

log = logging.getLogger("preprocess")
# Bump SHARD_FORMAT when the codes of the same settings change (every shard is re-encoded),
# MANIFEST_FORMAT when only the merged manifests change (shards are reused, the merge reruns).
SHARD_FORMAT = "codectts-stage1-1"
# 2: a cut's duration spans its codes (codec_span); 3: one manifest per shard + index
MANIFEST_FORMAT = "codectts-stage1-3"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def codec_settings(pcfg) -> dict:
    """Settings that define the codec (a change rebuilds it and redoes every shard)."""
    if pcfg.codec_checkpoint:
        path = resolve_path(pcfg.codec_checkpoint)
        if not path.is_file():
            raise StageError(f"preprocess.codec_checkpoint: {path} does not exist")
        weights = {"checkpoint_sha256": file_sha256(path)}
    elif pcfg.codec_pretrained:
        weights = {"pretrained": OFFICIAL_NAME}
    else:
        weights = {
            "random_init_seed": pcfg.codec_init_seed,
            "init_seconds": pcfg.codec_init_seconds,
        }
    return {"bandwidth": pcfg.codec_bandwidth, **weights}


def stage_settings(cfg: Config, roots: dict[str, Path]) -> dict:
    pcfg = cfg.preprocess
    existing = resolve_path(pcfg.existing_symbols_dict) if pcfg.existing_symbols_dict else None
    if existing is not None and not existing.is_file():
        raise StageError(f"preprocess.existing_symbols_dict: {existing} does not exist")
    keys = (
        "min_duration max_duration phone_extractor phone_language libritts_train_subsets "
        "libritts_valid_subsets libritts_test_subsets valid_fraction test_fraction split_seed "
        "symbols_dict acoustic_token_dir train_file valid_file shard_size"
    ).split()
    return {
        "format": MANIFEST_FORMAT,
        "datasets": {name: str(root) for name, root in roots.items()},
        "preprocess": {k: getattr(pcfg, k) for k in keys},
        "g2p": g2p_version(pcfg.phone_language),
        "existing_symbols_sha256": file_sha256(existing) if existing else "",
        "codec": codec_settings(pcfg),
    }


def corpus_signature(cfg: Config, roots: dict[str, Path]) -> str:
    """Names, sizes and mtimes of every corpus file the manifests depend on."""
    h = hashlib.sha256()
    for name, root in roots.items():
        for f in corpus_files(name, root, cfg.preprocess):
            try:
                st = f.stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ step 2: filters + G2P
def filter_and_phonemize(
    splits: dict[str, CutSet], pcfg, fixed: TextTokenizer | None
) -> tuple[dict[str, list], list[dict]]:
    """Kept cuts per split (with `custom["phones"]`) and the rejections."""
    kept: dict[str, list] = {}
    rejected: list[dict] = []
    for split, cuts in splits.items():
        kept[split] = []
        for cut in tqdm(cuts, desc=f"G2P {split}", leave=False, mininterval=2):
            path = cut.recording.sources[0].source
            text = " ".join(s.text or "" for s in cut.supervisions).strip()
            if not cut.supervisions or not text:
                rejected.append(reject(cut.id, path, "empty_transcript"))
                continue
            if cut.duration < pcfg.min_duration:
                rejected.append(reject(cut.id, path, "too_short", f"{cut.duration:.2f} s"))
                continue
            if cut.duration > pcfg.max_duration:
                rejected.append(reject(cut.id, path, "too_long", f"{cut.duration:.2f} s"))
                continue
            phones = phonemize([text], pcfg.phone_language)[0]
            if not has_speech_phones(phones):
                rejected.append(reject(cut.id, path, "unphonemizable_text", repr(text)[:120]))
                continue
            if fixed is not None:
                unknown = fixed.unknown_phones(phones)
                if unknown:
                    detail = f"phones {unknown} not in {pcfg.existing_symbols_dict}"
                    rejected.append(reject(cut.id, path, "unknown_phone", detail))
                    continue
            kept[split].append(cut.with_custom("phones", phones))
    return kept, rejected


# ------------------------------------------------------------------ step 3: codec
def prepare_codec(
    out: Path, cfg: Config, kept: dict[str, dict[str, list]], device: str = "cpu"
) -> CodecTokenizer:
    """Reuse the saved codec when its settings match, else build (+ k-means init) and save."""
    pcfg = cfg.preprocess
    settings = codec_settings(pcfg)
    meta_path = out / "codec" / "codec.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("settings") == settings:
        codec = CodecTokenizer.from_processed_dir(out, device)
        log.info("codec: reusing %s (%s)", meta_path, codec.source.get("source"))
    else:
        codec = CodecTokenizer.from_config(pcfg, device)
        if codec.is_random_init:
            wavs, seconds = [], 0.0
            train = [
                c
                for name in sorted(kept)
                for c in sorted(kept[name].get("train", []), key=lambda c: c.id)
            ]
            for cut in train:
                if seconds >= pcfg.codec_init_seconds:
                    break
                try:
                    wavs.append(load_audio(cut.recording.sources[0].source))
                except Exception:
                    continue  # a bad file is rejected (and reported) by its shard
                seconds += len(wavs[-1]) / 24000
            if not wavs:
                raise StageError("no readable training audio to initialise the random-init codec")
            log.info("codec: k-means init of the random-init codec on %.1f s of audio", seconds)
            codec.kmeans_init_(wavs, seed=pcfg.codec_init_seed)
        codec.source["settings"] = settings
        codec.save(out / "codec")
    if codec.is_random_init:
        log.warning("!" * 100)
        log.warning(RANDOM_INIT_WARNING)
        log.warning("!" * 100)
    return codec


# ------------------------------------------------------------------ step 4: shards
def plan_shards(
    name: str, kept: dict[str, list], num_candidates: int, out_dir: Path, codec, pcfg
) -> list[ShardTask]:
    """Stable shards: crc32(id) mod S, S from the corpus size before filtering, so a filter
    change only touches the shards whose membership changes."""
    cuts_of = (c for split in kept.values() for c in split)
    tasks = []
    for index, cuts in stable_shards(cuts_of, num_candidates, pcfg.shard_size).items():
        dicts = []
        for c in cuts:
            d = c.to_dict()
            d.get("custom", {}).pop("phones", None)  # phones are merged later, not in shards
            dicts.append(d)
        identity = [(c.id, c.recording.sources[0].source, c.recording.num_samples) for c in cuts]
        fp = _sha([SHARD_FORMAT, codec.fingerprint(), identity])[:12]
        tasks.append(
            ShardTask(
                name,
                index,
                f"shard-{index:05d}-{fp}",
                str(out_dir),
                dicts,
                pcfg.codec_batch_seconds,
            )
        )
    return tasks


def run_shards(tasks: list[ShardTask], codec, out: Path, devices: list[str], workers: int):
    todo = [t for t in tasks if not t.done_path.is_file()]
    done = len(tasks) - len(todo)
    if done:
        log.info(
            "tokenize: %d of %d shards already done (kept from an earlier run)", done, len(tasks)
        )
    if not todo:
        return
    hours = sum(t.seconds for t in todo) / 3600
    bar = tqdm(
        total=hours * (1 + 1e-9),  # float sums of per-batch seconds may overshoot
        unit="h",
        desc="EnCodec tokens (audio hours)",
        bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}{postfix}]",
    )
    processes = workers * len(devices)
    start = time.time()

    def advance(seconds: float) -> None:
        bar.update(seconds / 3600)
        bar.set_postfix_str(f"{bar.n / max(time.time() - start, 1e-9):.4f} audio-h/s")

    if processes == 1:
        codec.to(devices[0])
        for task in todo:
            run_shard(task, codec, progress=advance)
    else:
        for record in run_pool(worker_init, (str(out), devices), worker_run, todo, processes):
            advance(record["seconds"])
    bar.close()


def print_summary(summaries: dict[str, dict]) -> None:
    for name, s in summaries.items():
        for split, v in s["splits"].items():
            log.info(
                "%s/%s: kept %d utterances, %.3f h, %d speakers",
                name,
                split,
                v["utterances"],
                v["hours"],
                v["speakers"],
            )
        total = sum(s["rejected"].values())
        detail = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "none"
        log.info("%s: rejected %d (%s) -> %s/rejected.jsonl", name, total, detail, name)


def corpus_roots(cfg: Config) -> dict[str, Path]:
    """{corpus name: its checked root folder} for every corpus in `dataset`."""
    roots = {}
    for name in cfg.dataset:
        if name not in cfg.dataset_path:
            raise StageError(f"dataset_path has no entry for corpus {name!r} (named in 'dataset')")
        roots[name] = resolve_path(cfg.dataset_path[name])
        check_corpus_path(name, roots[name])
    return roots


def finished_summaries(out: Path, pcfg: PreprocessConfig, fingerprint: str) -> dict | None:
    """The summaries of a completed stage 1 with this fingerprint whose outputs all exist."""
    done_path = out / DONE_FILE
    if not done_path.is_file():
        return None
    done = json.loads(done_path.read_text())
    outputs = [out / pcfg.symbols_dict, out / "codec" / "codec.json", out / "config.json"]
    if done.get("fingerprint") == fingerprint and all(p.is_file() for p in outputs):
        return done["summaries"]
    log.info("Stage 1 settings or corpus files changed since the last run: updating")
    return None


def read_and_phonemize(
    roots: dict[str, Path], pcfg: PreprocessConfig, out: Path
) -> tuple[dict, dict, dict]:
    """(kept splits, rejected records, candidate count) per corpus; a corpus with nothing left
    is an error (its rejected.jsonl written first, so the user can see why)."""
    fixed = (
        TextTokenizer.from_file(resolve_path(pcfg.existing_symbols_dict))
        if pcfg.existing_symbols_dict
        else None
    )
    kept, rejected, candidates = {}, {}, {}
    for name, root in roots.items():
        log.info("%s: reading manifests from %s", name, root)
        corpus = read_corpus(name, root, pcfg, out / name)
        candidates[name] = sum(len(c) for c in corpus.splits.values()) + len(corpus.rejected)
        kept[name], rej = filter_and_phonemize(corpus.splits, pcfg, fixed)
        rejected[name] = corpus.rejected + rej
        if not any(kept[name].values()):
            atomic_write_text(
                out / name / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected[name])
            )
            raise StageError(
                f"{name}: nothing usable left ({len(rejected[name])} utterances "
                f"rejected, see {out / name / 'rejected.jsonl'})"
            )
    return kept, rejected, candidates


JOB_COMMAND = "sh egs/tts/VALLE/run.sh --stage 1 --config {config} --nj {nj} --job_index {job}"


def run_job(tasks: list[ShardTask], codec, out: Path, devices, workers, nj, job_index, config):
    """Job `job_index` of `nj`: encode its own shards of the plan, no merge."""
    mine = [t for k, t in enumerate(tasks) if job_of(k, nj) == job_index]
    run_shards(mine, codec, out, devices, workers)
    log.info(
        "job %d of %d: its %d of %d shards are encoded. When every job is done, merge with: "
        "sh egs/tts/VALLE/run.sh --stage 1 --config %s --nj %d",
        job_index, nj, len(mine), len(tasks), config, nj,
    )  # fmt: skip


def plan(cfg: Config, roots: dict[str, Path], out: Path, device: str):
    """Corpora -> (kept cuts, rejected, shard tasks per corpus, codec): identical in every job."""
    pcfg = cfg.preprocess
    # A pretrained / local codec needs no corpus audio: get it first, so missing weights fail
    # before minutes of manifest work. A random-init one is k-means-initialised on the corpus.
    random_init = not pcfg.codec_checkpoint and not pcfg.codec_pretrained
    codec = None if random_init else prepare_codec(out, cfg, {}, device)
    kept, rejected, candidates = read_and_phonemize(roots, pcfg, out)
    if codec is None:
        codec = prepare_codec(out, cfg, kept, device)
    tasks = {
        name: plan_shards(
            name, kept[name], candidates[name], out / name / pcfg.acoustic_token_dir, codec, pcfg
        )
        for name in roots
    }
    return kept, rejected, tasks, codec


def run_stage1(
    cfg: Config,
    devices: list[str],
    num_workers: int,
    nj: int = 1,
    job_index: int | None = None,
    config_path: str = "CONFIG",
) -> dict:
    """Run (or resume, or confirm up to date) stage 1; returns the per-dataset summaries ({} for
    a job of a split run: `nj` jobs, this one `job_index`; see the module docstring).
    `config_path` is only quoted in the commands that messages suggest."""
    start = time.time()
    pcfg = cfg.preprocess
    if nj < 1:
        raise StageError(f"--nj must be >= 1 (got {nj})")
    if job_index is not None and not 0 <= job_index < nj:
        raise StageError(f"--job_index {job_index} is outside 0 .. {nj - 1} (--nj {nj})")
    out = resolve_path(pcfg.processed_dir)
    roots = corpus_roots(cfg)
    settings = stage_settings(cfg, roots)
    fingerprint = _sha([settings, corpus_signature(cfg, roots)])
    done_path = out / DONE_FILE
    if (done := finished_summaries(out, pcfg, fingerprint)) is not None:
        log.info(
            "Stage 1 is already complete for these settings and corpus files: nothing to do (%s)",
            done_path,
        )
        print_summary(done)
        return done
    done_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    kept, rejected, tasks, codec = plan(cfg, roots, out, devices[0])
    all_tasks = [t for ts in tasks.values() for t in ts]
    if job_index is not None:
        run_job(all_tasks, codec, out, devices, num_workers, nj, job_index, config_path)
        return {}
    if nj > 1:
        command = JOB_COMMAND.format(config=config_path, nj=nj, job="{job}")
        check_shards_complete(all_tasks, nj, command)
    else:
        run_shards(all_tasks, codec, out, devices, num_workers)
    summaries = {
        name: merge_dataset(name, kept[name], tasks[name], rejected[name], out, pcfg)
        for name in roots
    }
    for name, s in summaries.items():
        if not any(v["utterances"] for v in s["splits"].values()):
            raise StageError(f"{name}: nothing usable left (see {out / name / 'rejected.jsonl'})")
    kept_all = [c for name in roots for split in kept[name].values() for c in split]
    write_symbols(out, kept_all, pcfg, log)
    print_summary(summaries)
    record = {"fingerprint": fingerprint, "summaries": summaries, "settings": settings}
    finish_stage1(cfg, out, record, start, log)
    return summaries
