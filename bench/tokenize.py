"""Benchmark: stage-1 EnCodec tokenization, batched vs one utterance at a time, side by side.

    .venv/bin/python bench/tokenize.py [--utts 24] [--device cpu] [--threads 2]

* baseline - what Amphion's recipe does (`utils/tokenizer.py: extract_encodec_token`): for every
  file build a fresh `EncodecModel.encodec_model_24khz()` (weights loaded from disk), read and
  convert the audio, encode it alone;
* ours - stage 1's extractor: one `CodecTokenizer` loaded once, utterances sorted by length and
  grouped by total duration (`--batch_seconds`); `CodecTokenizer.encode` runs a group as one
  padded batch on CUDA and one utterance at a time on CPU (batching is slower there, and not
  bitwise stable; see models/codec/encodec.py). Once in one process, and once split over
  `--workers` processes (what stage 1 does with num_workers). A last row forces the padded-batch
  (CUDA) path on the device, to show what batching does there.

Both run on the same espeak-ng utterances (made with egs/tts/VALLE/local/make_mini_corpus.py in a
temp dir), the same device and thread count, and both include reading the audio. No weights can
be downloaded here, so both use the same random-init weights (identical compute to the official
ones), saved to a temp file that the baseline loads per file like the cached official checkpoint.
The codes of the two paths are compared (they must be equal).
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib `tokenize` (which torch imports via inspect/linecache):
# drop its own folder from the import path before anything imports it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import soundfile as sf  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "egs" / "tts" / "VALLE" / "local"))

from make_mini_corpus import make_mini_corpus  # noqa: E402

from models.codec.encodec import CodecTokenizer  # noqa: E402
from preprocessors.tokenize import make_batches  # noqa: E402
from utils.audio import load_audio  # noqa: E402


def baseline(paths: list[Path], weights: Path, device: str) -> list[torch.Tensor]:
    from encodec import EncodecModel
    from encodec.utils import convert_audio

    out = []
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = EncodecModel.encodec_model_24khz(pretrained=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.set_target_bandwidth(6.0)
        model = model.to(device).eval()
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = convert_audio(torch.from_numpy(data.T.copy()), sr, model.sample_rate, 1)
        with torch.no_grad():
            frames = model.encode(wav[None].to(device))
        out.append(torch.cat([f[0] for f in frames], dim=-1)[0].t().cpu())
    return out


def batched(
    paths: list[Path], codec: CodecTokenizer, batch_seconds: float, force: bool | None = None
) -> list[torch.Tensor]:
    wavs = [load_audio(p, 24000) for p in paths]
    out: list[torch.Tensor | None] = [None] * len(wavs)
    for batch in make_batches([len(w) / 24000 for w in wavs], batch_seconds):
        for i, codes in zip(batch, codec.encode([wavs[i] for i in batch], force), strict=True):
            out[i] = codes
    return out


_codec: CodecTokenizer | None = None


def _init_worker(weights: Path, device: str) -> None:
    global _codec
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _codec = CodecTokenizer.build(checkpoint=weights, device=device)


def _worker(args: tuple) -> list[torch.Tensor]:
    paths, batch_seconds = args
    return batched(paths, _codec, batch_seconds)


def parallel(pool, paths: list[Path], workers: int, batch_seconds: float) -> list:
    """Round-robin over the pool's `workers` processes (each loaded its codec at start-up)."""
    chunks = [paths[i::workers] for i in range(workers)]
    results = pool.map(_worker, [(c, batch_seconds) for c in chunks])
    out: list = [None] * len(paths)
    for w, codes in enumerate(results):
        for j, c in enumerate(codes):
            out[w + j * workers] = c
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utts", type=int, default=24, help="utterances (espeak-ng)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (stage 1: 1)")
    parser.add_argument("--batch_seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (best kept)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes of the parallel run (stage 1's num_workers)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        speakers = 4
        root = make_mini_corpus(
            Path(tmp) / "corpus",
            num_speakers=speakers,
            utts_per_speaker=max(1, args.utts // speakers),
            dev_speakers=0,
            dev_utts_per_speaker=0,
        )
        paths = sorted(root.rglob("*.wav"))
        seconds = sum(sf.info(p).duration for p in paths)
        codec = CodecTokenizer.build(pretrained=False, seed=0, device=args.device)
        codec.kmeans_init_([load_audio(p) for p in paths[:4]], seed=0)
        weights = Path(tmp) / "encodec_24khz.pt"
        torch.save({k: v.cpu() for k, v in codec.model.state_dict().items()}, weights)

        batched(paths[:2], codec, args.batch_seconds)  # warm-up (allocator, kernels)
        import multiprocessing as mp

        # Worker start-up (import torch, load the codec) is paid once per stage run, not per
        # file, so the pool is started and warmed up before timing.
        pool = mp.get_context("spawn").Pool(args.workers, _init_worker, (weights, args.device))
        parallel(pool, paths[: args.workers], args.workers, args.batch_seconds)
        times = {"baseline": [], "batched": [], "parallel": [], "padded": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            ref = baseline(paths, weights, args.device)
            times["baseline"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = batched(paths, codec, args.batch_seconds)
            times["batched"].append(time.perf_counter() - start)
            start = time.perf_counter()
            padded = batched(paths, codec, args.batch_seconds, force=True)
            times["padded"].append(time.perf_counter() - start)
            start = time.perf_counter()
            par = parallel(pool, paths, args.workers, args.batch_seconds)
            times["parallel"].append(time.perf_counter() - start)
        pool.close()
        pool.join()
        frames = sum(len(a) for a in ref)
        same = {
            name: (
                sum(int(torch.equal(a, b)) for a, b in zip(ref, got, strict=True)),
                sum(int((a == b).all(1).sum()) for a, b in zip(ref, got, strict=True)),
            )
            for name, got in (("batched", ours), ("parallel", par), ("padded", padded))
        }

    best = {name: min(t) for name, t in times.items()}
    cuda = args.device.startswith("cuda")
    labels = {
        "baseline": "one utterance at a time, fresh model per file",
        "batched": f"stage-1 extractor, one model ({'batched' if cuda else 'one by one'})",
        "parallel": f"stage-1 extractor, {args.workers} worker processes x 1 thread",
        "padded": "padded batches forced (the CUDA path) on this device",
    }
    print(
        f"device={args.device} threads={args.threads} utterances={len(paths)} "
        f"audio={seconds:.1f}s batch_seconds={args.batch_seconds:g} repeats={args.repeats}"
    )
    print(f"{'method':<52} {'wall s':>8} {'audio-s / wall-s':>17} {'ratio':>7}")
    for name, label in labels.items():
        wall = best[name]
        ratio = best["baseline"] / wall
        print(f"{label:<52} {wall:8.2f} {seconds / wall:17.1f} {ratio:6.2f}x")
    for name, (utts, same_frames) in same.items():
        print(
            f"codes of '{labels[name]}' identical to the baseline: "
            f"{utts}/{len(paths)} utterances, {same_frames}/{frames} frames"
        )


if __name__ == "__main__":
    main()
