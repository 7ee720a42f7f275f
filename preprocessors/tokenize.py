"""Codec tokenization of one shard of cuts: load, batch by duration, encode, store exactly.

A shard is the unit of parallelism and of resume. Its outputs, next to each other in
`<processed_dir>/<dataset>/<acoustic_token_dir>/`:

    shard-00003-<fingerprint>.h5              codes of every encoded cut (int16, exact)
    shard-00003-<fingerprint>.jsonl.gz        those cuts with `codes` attached (TemporalArray)
    shard-00003-<fingerprint>.rejected.jsonl  cuts whose audio could not be used
    shard-00003-<fingerprint>.done            written last: the shard is complete

Everything is written under temporary names and renamed, the `.done` marker last, so a kill
leaves either a complete shard or files that the next run ignores and overwrites. The
fingerprint covers the codec and the shard's cut ids / audio files, so a changed codec or
membership gives a new name and the shard is redone.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet, NumpyHdf5Writer
from lhotse.utils import fastcopy

from models.codec.encodec import HOP, SAMPLE_RATE, CodecTokenizer
from preprocessors.shards import CodecShard, audio_reason, claim_device, write_shard_files
from utils.audio import AudioError, load_audio

FRAME_SHIFT = HOP / SAMPLE_RATE


@dataclass
class ShardTask(CodecShard):
    """A shard's cuts (without phones) and the padded seconds per EnCodec batch."""

    batch_seconds: float


def make_batches(durations: list[float], batch_seconds: float) -> list[list[int]]:
    """Indices sorted by duration, cut into batches of at most batch_seconds of padded audio
    (longest item x batch size), so little compute is spent on padding."""
    order = sorted(range(len(durations)), key=lambda i: durations[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and durations[i] * (len(current) + 1) > batch_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def run_shard(task: ShardTask, codec: CodecTokenizer, progress=None) -> dict:
    """Encode one shard (see module doc); returns its .done record."""
    out_dir = Path(task.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = CutSet.from_dicts(task.cuts).to_eager()
    cut_list = list(cuts)
    tag = uuid.uuid4().hex[:8]
    h5_final = out_dir / f"{task.name}.h5"
    h5_tmp = out_dir / f".{task.name}.tmp-{tag}.h5"
    rejected: list[dict] = []
    encoded: dict[str, object] = {}
    with NumpyHdf5Writer(h5_tmp, mode="w") as writer:
        batches = make_batches([c.duration for c in cut_list], task.batch_seconds)
        for batch in batches:
            wavs, members = [], []
            for i in batch:
                cut = cut_list[i]
                path = cut.recording.sources[0].source
                try:
                    wav = load_audio(path, SAMPLE_RATE)
                except AudioError as e:
                    rejected.append(
                        {"id": cut.id, "path": path, "reason": audio_reason(e), "detail": e.reason}
                    )
                    continue
                wavs.append(wav)
                members.append(cut)
            for cut, wav, codes in zip(members, wavs, codec.encode(wavs), strict=True):
                assert codes.shape[0] == codec.num_frames(len(wav)), cut.id
                arr = writer.store_array(
                    cut.id,
                    codes.numpy().astype(np.int16),
                    frame_shift=FRAME_SHIFT,
                    temporal_dim=0,
                )
                encoded[cut.id] = arr
            if progress is not None:
                progress(sum(cut_list[i].duration for i in batch))
    os.replace(h5_tmp, h5_final)
    out_cuts = []
    for cut in cut_list:
        if cut.id in encoded:
            arr = encoded[cut.id]
            arr = fastcopy(arr, array=fastcopy(arr.array, storage_path=str(h5_final)))
            out_cuts.append(cut.with_custom("codes", arr))
    record = {
        "dataset": task.dataset,
        "name": task.name,
        "encoded": len(out_cuts),
        "rejected": len(rejected),
        "seconds": sum(c.duration for c in out_cuts),
    }
    write_shard_files(out_dir, task.name, out_cuts, rejected, record)
    return record


# ------------------------------------------------------------------ worker processes
_worker_codec: CodecTokenizer | None = None


def worker_init(processed_dir: str, devices: list[str], threads: int, counter) -> None:
    """Pool initializer: pick a device round-robin, load the saved codec once."""
    global _worker_codec
    device = claim_device(devices, threads, counter)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _worker_codec = CodecTokenizer.from_processed_dir(processed_dir, device=device)


def worker_run(task: ShardTask) -> dict:
    assert _worker_codec is not None, "worker_init was not run"
    return run_shard(task, _worker_codec)
