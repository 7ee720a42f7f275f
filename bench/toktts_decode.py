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

import torch

from bench import _timing as timing
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
    timing.eos_off(cfg.eos_id, model.head)
    return model


def texts(batch: int, args: argparse.Namespace, device: torch.device, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, args.chars, (args.text_len,), generator=g).to(device)] * batch


def run_case(model: TokTTS, rows: list, use_kv_cache: bool, device: torch.device) -> dict:
    with timing.PeakMemory(device) as mem:
        result, seconds = timing.timed(
            lambda: generate(model, rows, use_kv_cache=use_kv_cache), device
        )
    frames = sum(len(c) for c in result.codes)
    assert frames == model.cfg.max_frames * len(rows), "EOS forced off: every item hits the cap"
    return dict(
        seconds=seconds,
        frames=frames,
        peak=mem.peak_bytes,
        load=timing.load_average(),
        codes=result.codes,
    )


def row(name: str, batch: int, r: dict) -> str:
    speed = r["frames"] / r["seconds"]
    return timing.table_row(
        name, batch, f"{r['seconds']:.3f}", f"{speed:.1f}", f"{2 * speed:.1f}",
        f"{r['peak'] / 2**20:.0f} MiB", f"{r['load']:.1f}",
    )  # fmt: skip


def main() -> None:
    parser = timing.bench_parser(__doc__)
    parser.add_argument("--dim", type=int, default=128, help="model width (config default 256)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--chars", type=int, default=60, help="character table size")
    parser.add_argument("--text-len", type=int, default=40, help="characters per text")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per item (75 frames/s)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    device = timing.device_of(args)
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    timing.print_header(
        "TokTTS",
        device,
        args.dtype,
        f"dim={args.dim}, heads={args.heads}, layers={args.layers}+{args.layers}, "
        f"{n_params / 1e6:.1f}M parameters (random), text {args.text_len} chars, "
        f"{args.seconds:g} s = {model.cfg.max_tokens} tokens per item",
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
    singles = timing.combine([run_case(model, [r], True, device) for r in many])
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
        f"(CPU). {timing.load_note()}"
    )


if __name__ == "__main__":
    main()
