"""Stage 3 end to end: a test list decoded in batches vs one line at a time, side by side.

Everything stage 3 does per line is timed: G2P, prompt loading + EnCodec tokenization, the
model's generate (AR with KV cache + NAR) and EnCodec decoding + wav writing
(`Synthesizer.run`). The model has random weights of the chosen size and its EOS logit is forced
to -inf, so every line generates exactly --frames frames (equal work in both runs); the codec is
the random-init EnCodec 24 kHz (same architecture and cost as the official one). The batched run
must write byte-identical wav files (greedy decoding), which is checked.

    python -P bench/inference_batch.py                      # 16 lines, dim 256, 4 layers
    python -P bench/inference_batch.py --lines 4 --dim 64 --layers 1 --frames 20   # smoke run

(-P: do not put bench/ first on sys.path, where a file could shadow a standard module.)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from models.base.inference import synthesize
from models.codec.encodec import CodecTokenizer
from models.tts.valle.inference import ModelSource, Synthesizer, Utterance
from models.tts.valle.valle import VALLE
from text.g2p import phonemize
from text.symbol_table import SymbolTable, TextTokenizer
from utils.config import Config, InferenceConfig, ModelConfig

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Every morning the baker opened his shop before sunrise.",
    "We walked along the river until the lights of the town appeared.",
    "Please bring the letters to the office before noon.",
    "Children were playing in the garden under the tall trees.",
    "The captain looked at the map and chose the northern route.",
]


def make_prompts(folder: Path, n: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(seconds * 24000)) / 24000
        wav = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        paths.append(folder / f"prompt{i}.wav")
        sf.write(paths[-1], wav.astype(np.float32), 24000)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--frames", type=int, default=75, help="generated frames per line (75 = 1 s)")
    p.add_argument("--prompt_seconds", type=float, default=3.0)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs; the best is kept")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_inference_"))

    prompts = make_prompts(tmp, min(args.lines, 4), args.prompt_seconds)
    utts = [
        Utterance(
            name=f"u{i}",
            text=SENTENCES[i % len(SENTENCES)],
            text_prompt=SENTENCES[(i + 3) % len(SENTENCES)],
            audio_prompt=prompts[i % len(prompts)],
            line=i + 1,
        )
        for i in range(args.lines)
    ]
    table = SymbolTable.from_symbols({ph for seq in phonemize(SENTENCES) for ph in seq})
    table.to_file(tmp / "symbols.dict")
    model_cfg = ModelConfig(
        text_token_num=TextTokenizer(table).vocab_size,
        decoder_dim=args.dim,
        nhead=args.heads,
        num_decoder_layers=args.layers,
        dropout=0.0,
    )
    source = ModelSource("experiment", tmp, tmp / "random", tmp / "symbols.dict", Config())
    source.cfg = dataclasses.replace(source.cfg, model=model_cfg)
    torch.manual_seed(0)
    model = VALLE(model_cfg).to(device).eval()
    eos = model.eos_id
    model.ar_predict_layer.register_forward_hook(
        lambda module, inputs, out: out.index_fill(-1, torch.tensor([eos], device=out.device), -1e9)
    )
    codec = CodecTokenizer.build(pretrained=False, seed=0, device=device)
    codec.kmeans_init_([torch.from_numpy(sf.read(prompts[0], dtype="float32")[0])])

    print(
        f"device {device}, threads {args.threads}; {args.lines} lines x {args.frames} frames, "
        f"prompts {args.prompt_seconds} s; model dim {args.dim}, {args.heads} heads, "
        f"{args.layers} layers, 8 codebooks"
    )
    warm = Synthesizer(model, source, codec, InferenceConfig(top_k=1, max_frames=2), device)
    (tmp / "warmup").mkdir()
    synthesize(warm, utts[:1], tmp / "warmup", batch_size=1, seed=0, progress=False)  # caches
    times: dict[int, float] = {}
    phases: dict[int, dict[str, float]] = {}
    cpu: dict[int, float] = {}  # process CPU seconds: less sensitive to other load than wall
    outputs: dict[int, dict[str, bytes]] = {}
    audio = 0.0
    for repeat in range(args.repeats):  # alternate, so load changes on a shared machine hit both
        for bs in (1, args.batch_size):
            inf = InferenceConfig(top_k=1, batch_size=bs, max_frames=args.frames)
            synth = Synthesizer(model, source, codec, inf, device)
            out = tmp / f"bs{bs}_{repeat}"
            out.mkdir()
            start, cpu_start = time.perf_counter(), time.process_time()
            summary = synthesize(synth, utts, out, batch_size=bs, seed=inf.seed, progress=False)
            wall = time.perf_counter() - start
            cpu[bs] = min(cpu.get(bs, float("inf")), time.process_time() - cpu_start)
            if wall < times.get(bs, float("inf")):
                times[bs], phases[bs] = wall, dict(summary.timings)
            assert not summary.failures, summary.failures
            assert all(r["frames"] == args.frames for r in summary.records)
            outputs[bs] = {r["name"]: Path(r["output"]).read_bytes() for r in summary.records}
            audio = summary.audio_seconds
    for bs in (1, args.batch_size):
        print(
            f"batch_size {bs:3d}: {times[bs]:7.2f} s wall, {cpu[bs]:7.2f} s CPU (best of "
            f"{args.repeats}), "
            f"real-time factor {times[bs] / audio:.3f} ("
            + ", ".join(f"{k} {v:.2f} s" for k, v in phases[bs].items())
            + ")"
        )
    same = outputs[1] == outputs[args.batch_size]
    b = args.batch_size
    print(f"speed-up batch {b} vs 1: {times[1] / times[b]:.2f}x wall, {cpu[1] / cpu[b]:.2f}x CPU")
    print(f"identical wav files: {same}")
    assert same, "batched decoding changed the output"


if __name__ == "__main__":
    main()
