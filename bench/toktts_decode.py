"""TokTTS decoding speed: KV cache vs recompute, batch 8 vs 8 x batch 1, side by side in one run.

Random weights, greedy, EOS forced off so every item decodes exactly ``--seconds`` of audio
(75 frames/s x 2 codebooks = 150 tokens per second). "cached" = self-attention KV cache + cross
keys/values projected once; "recompute" = the reference loop that runs the decoder over the whole
sequence every step (``generate(..., use_kv_cache=False)``). Peak memory as in bench/ar_decode.py.

    python -m bench.toktts_decode                                   # smoke sizes (seconds)
    python -m bench.toktts_decode --dim 256 --heads 4 --layers 4 --seconds 2   # config default
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.ar_decode import PeakMemory, sync
from models.tts.toktts.decode import generate
from models.tts.toktts.model import TokTTS, TokTTSConfig


def build_model(args: argparse.Namespace, device: torch.device) -> TokTTS:
    torch.manual_seed(0)
    cfg = TokTTSConfig(
        vocab_size=args.chars,
        dim=args.dim,
        nhead=args.heads,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        max_audio_seconds=args.seconds,
    )
    model = TokTTS(cfg).to(device=device, dtype=getattr(torch, args.dtype)).eval()

    def eos_off(module, inputs, logits):  # fixed output length: EOS is never chosen
        logits = logits.clone()
        logits[..., cfg.eos_id] = float("-inf")
        return logits

    model.head.register_forward_hook(eos_off)
    return model


def texts(batch: int, args: argparse.Namespace, device: torch.device, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, args.chars, (args.text_len,), generator=g).to(device)] * batch


def run_case(model: TokTTS, rows: list, use_kv_cache: bool, device: torch.device) -> dict:
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        result = generate(model, rows, use_kv_cache=use_kv_cache)
        sync(device)
        seconds = time.perf_counter() - start
    frames = sum(len(c) for c in result.codes)
    assert frames == model.cfg.max_frames * len(rows), "EOS forced off: every item hits the cap"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return dict(seconds=seconds, frames=frames, peak=mem.peak_bytes, load=load, codes=result.codes)


def combine(runs: list[dict]) -> dict:
    """N x batch 1: times and frames add up, memory is the largest single peak."""
    return dict(
        seconds=sum(r["seconds"] for r in runs),
        frames=sum(r["frames"] for r in runs),
        peak=max(r["peak"] for r in runs),
        load=max(r["load"] for r in runs),
        codes=[c for r in runs for c in r["codes"]],
    )


def row(name: str, batch: int, r: dict) -> str:
    return (
        f"| {name} | {batch} | {r['seconds']:.3f} | {r['frames'] / r['seconds']:.1f} | "
        f"{2 * r['frames'] / r['seconds']:.1f} | {r['peak'] / 2**20:.0f} MiB | {r['load']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dim", type=int, default=128, help="model width (config default 256)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--chars", type=int, default=60, help="character table size")
    parser.add_argument("--text-len", type=int, default=40, help="characters per text")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per item (75 frames/s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# TokTTS decode benchmark: device={device} ({torch.get_num_threads()} threads), "
        f"dtype={args.dtype}, dim={args.dim}, heads={args.heads}, layers={args.layers}+"
        f"{args.layers}, {n_params / 1e6:.1f}M parameters (random), text {args.text_len} chars, "
        f"{args.seconds:g} s = {model.cfg.max_tokens} tokens per item, greedy, EOS forced off, "
        f"torch {torch.__version__}",
        flush=True,
    )
    one = texts(1, args, device, seed=0)
    warm = TokTTS(model.cfg).to(device=device, dtype=model.head.weight.dtype).eval()
    generate(warm, one, max_frames=2)  # warm-up (kernels, allocator)
    generate(warm, one, max_frames=2, use_kv_cache=False)

    lines = [
        "| case | batch | s | frames/s | tokens/s | peak mem | load |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cached = run_case(model, one, True, device)
    recompute = run_case(model, one, False, device)
    n = args.batch_size
    many = [texts(1, args, device, seed=100 + i)[0] for i in range(n)]
    batched = run_case(model, many, True, device)
    singles = combine([run_case(model, [r], True, device) for r in many])
    lines += [
        row("cached", 1, cached),
        row("recompute (reference)", 1, recompute),
        row(f"batch {n} (cached)", n, batched),
        row(f"{n} x batch 1 (cached)", 1, singles),
    ]
    print("\n" + "\n".join(lines) + "\n")
    same = all(torch.equal(a, b) for a, b in zip(cached["codes"], recompute["codes"], strict=True))
    same_b = all(torch.equal(a, b) for a, b in zip(batched["codes"], singles["codes"], strict=True))
    print(
        f"KV cache speed-up at {args.seconds:g} s: {recompute['seconds'] / cached['seconds']:.1f}x"
    )
    print(f"batch {n} vs {n} x batch 1 throughput: {singles['seconds'] / batched['seconds']:.1f}x")
    print(f"codes equal: cached == recompute {same}, batch {n} == {n} x batch 1 {same_b}")
    print(
        "Peak mem: CUDA max_memory_allocated, or RSS growth over the level before each case "
        f"(CPU). Load = 1-minute load average at the end of the case ({os.cpu_count()} CPUs; "
        "other jobs on the machine slow every figure)."
    )


if __name__ == "__main__":
    main()
