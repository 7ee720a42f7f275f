"""DAC tokenization (and annotation measures) of one shard of Parler-TTS cuts.

A shard is the unit of parallelism and of resume. Its files, in
`<processed_dir>/<dataset>/dac_tokens/`:

    shard-00003-<fingerprint>.h5              DAC codes of every encoded cut (int16, exact)
    shard-00003-<fingerprint>.jsonl.gz        those cuts, `codes` attached (TemporalArray,
                                              frame_shift hop / rate) and, where asked for,
                                              `custom["annotation"]` = the measures
    shard-00003-<fingerprint>.rejected.jsonl  cuts whose audio (or measurement) failed
    shard-00003-<fingerprint>.done            written last: the shard is complete

Everything is written under temporary names and renamed, the `.done` marker last, so a kill
leaves either a complete shard or files that the next run ignores and overwrites. The
fingerprint covers the codec's weights, the shard's cuts (ids, files, sizes, which ones are
measured) and the measurement version, so any change gives a new name and the shard is redone.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, NumpyHdf5Writer
from lhotse.utils import fastcopy

from models.codec.dac import DacCodec
from preprocessors.annotate import SAMPLE_RATE as ANALYSIS_RATE
from preprocessors.annotate import AnnotationError, measure
from preprocessors.shards import CodecShard, audio_reason, claim_device, write_shard_files
from text.g2p import phonemize
from utils.audio import AudioError, load_audio, resample

TOKEN_DIR = "dac_tokens"
MEASURE_FORMAT = "codectts-parler-measures-1"  # bump when `measure` changes its numbers


@dataclass
class ParlerShard(CodecShard):
    measured: list[bool]  # per cut: compute the annotation measures
    phone_language: str


def count_phones(text: str, language: str) -> int:
    """Phones of the text from our G2P (word separators and punctuation not counted)."""
    return sum(1 for p in phonemize([text], language)[0] if p[0].isalnum())


def _encode_one(cut, codec: DacCodec, measured: bool, language: str, writer, rejected: list):
    """(codes TemporalArray, measures | None) of one cut, or None (a rejection is recorded)."""
    path = cut.recording.sources[0].source
    try:
        wav = load_audio(path, codec.sample_rate)
    except AudioError as e:
        rejected.append({"id": cut.id, "path": path, "reason": audio_reason(e), "detail": e.reason})
        return None
    measures = None
    if measured:
        text = " ".join(s.text or "" for s in cut.supervisions)
        try:
            wav16 = resample(wav, codec.sample_rate, ANALYSIS_RATE)
            measures = measure(wav16, count_phones(text, language))
        except AnnotationError as e:
            rejected.append({"id": cut.id, "path": path, "reason": "annotation_failed",
                             "detail": str(e)})  # fmt: skip
            return None
    codes = codec.encode([wav])[0]  # (frames, K) int64, frames = ceil(samples / hop)
    arr = writer.store_array(
        cut.id,
        codes.numpy().astype(np.int16),
        frame_shift=codec.hop_length / codec.sample_rate,
        temporal_dim=0,
    )
    return arr, measures


def run_shard(task: ParlerShard, codec: DacCodec, progress=None) -> dict:
    """Encode (and measure) one shard (see the module docstring); returns its .done record."""
    out_dir = Path(task.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = list(CutSet.from_dicts(task.cuts))
    h5_final = out_dir / f"{task.name}.h5"
    h5_tmp = out_dir / f".{task.name}.tmp-{uuid.uuid4().hex[:8]}.h5"
    rejected: list[dict] = []
    done = []
    try:
        with NumpyHdf5Writer(h5_tmp, mode="w") as writer:
            for cut, measured in zip(cuts, task.measured, strict=True):
                result = _encode_one(cut, codec, measured, task.phone_language, writer, rejected)
                if result is not None:
                    done.append((cut, *result))
                if progress is not None:
                    progress(cut.duration)
        os.replace(h5_tmp, h5_final)
    finally:
        h5_tmp.unlink(missing_ok=True)
    out_cuts = []
    for cut, arr, measures in done:
        arr = fastcopy(arr, array=fastcopy(arr.array, storage_path=str(h5_final)))
        cut = cut.with_custom("codes", arr)
        out_cuts.append(cut.with_custom("annotation", measures) if measures else cut)
    record = {"dataset": task.dataset, "name": task.name, "encoded": len(out_cuts),
              "rejected": len(rejected)}  # fmt: skip
    write_shard_files(out_dir, task.name, out_cuts, rejected, record)
    return record


# ------------------------------------------------------------------ worker processes
_worker_codec: DacCodec | None = None


def worker_init(codec_dir: str, devices: list[str], threads: int, counter) -> None:
    """Pool initializer: a device round-robin, the saved codec loaded once per process."""
    global _worker_codec
    _worker_codec = DacCodec.load(codec_dir).to(claim_device(devices, threads, counter))


def worker_run(task: ParlerShard) -> dict:
    assert _worker_codec is not None, "worker_init was not run"
    return run_shard(task, _worker_codec)
