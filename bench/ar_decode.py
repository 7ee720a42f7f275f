"""VALL-E zero-shot decoding speed: KV cache vs the reference loop, batch 8 vs 8 x batch 1.

Random weights of the released size (decoder_dim 1024, 16 heads, 12 layers, 8 codebooks), greedy,
with the EOS logit forced to -inf so every item decodes exactly the requested number of frames
(75 frames = 1 s), after a 3 s prompt (225 frames). Everything is measured side by side in one run
on one device. "AR" = the autoregressive loop (stream 0) alone; "AR+NAR" = the whole generate()
call including the 7 NAR stages. Peak memory: CUDA max_memory_allocated on GPU; on CPU the peak
resident set size above the level before the case (VmHWM, reset per case via clear_refs).

    python -m bench.ar_decode                      # full run (CPU: ~20-60 minutes)
    python -m bench.ar_decode --dim 128 --heads 4 --layers 2 --compare-seconds 0.5 \\
        --cached-seconds 1 --batch-seconds 0.5     # smoke run (seconds)
"""

from __future__ import annotations

import argparse

import torch

from bench import _timing as timing
from models.tts.valle import generation
from models.tts.valle.valle import VALLE
from utils.config import ModelConfig

FRAME_RATE = 75  # EnCodec 24 kHz frames per second


def build_model(args: argparse.Namespace, device: torch.device) -> VALLE:
    torch.manual_seed(0)
    cfg = ModelConfig(
        decoder_dim=args.dim,
        nhead=args.heads,
        num_decoder_layers=args.layers,
        text_token_num=args.text_vocab,
        num_quantizers=8,
        prefix_mode=1,
    )
    model = VALLE(cfg)
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    timing.eos_off(model.eos_id, model.ar_predict_layer)
    return model


def make_inputs(
    batch: int, args: argparse.Namespace, device: torch.device, seed: int
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, args.text_vocab, (batch, args.text_len), generator=g)
    prompt = torch.randint(0, 1024, (batch, args.prompt_frames, 8), generator=g)
    text_lens = torch.full((batch,), args.text_len)
    prompt_lens = torch.full((batch,), args.prompt_frames)
    return tuple(t.to(device) for t in (text, text_lens, prompt, prompt_lens))


def run_case(
    model: VALLE, inputs: tuple, frames: int, use_kv_cache: bool, device: torch.device
) -> dict:
    """One generate() call; the NAR share is timed by wrapping generation.nar_generate."""
    nar_seconds = [0.0]
    nar = generation.nar_generate

    def timed_nar(*a, **k):
        out, seconds = timing.timed(lambda: nar(*a, **k), device)
        nar_seconds[0] += seconds
        return out

    generation.nar_generate = timed_nar
    try:
        with timing.PeakMemory(device) as mem:
            result, total = timing.timed(
                lambda: model.generate(*inputs, max_new_frames=frames, use_kv_cache=use_kv_cache),
                device,
            )
    finally:
        generation.nar_generate = nar
    generated = sum(len(c) for c in result.codes)
    assert generated == frames * inputs[0].shape[0], "EOS forced off: every item must hit the cap"
    return dict(
        total=total,
        ar=total - nar_seconds[0],
        frames=generated,
        peak=mem.peak_bytes,
        load=timing.load_average(),
    )


def row(name: str, seconds: float, batch: int, r: dict) -> str:
    ar_speed, speed = r["frames"] / r["ar"], r["frames"] / r["total"]
    mib = r["peak"] / 2**20
    return timing.table_row(
        name, f"{seconds:g} s", batch, f"{r['ar']:.2f}", f"{ar_speed:.1f}", f"{r['total']:.2f}",
        f"{speed:.1f}", f"{mib:.0f} MiB", f"{r['load']:.1f}",
    )  # fmt: skip


def main() -> None:
    parser = timing.bench_parser(__doc__)
    parser.add_argument("--dim", type=int, default=1024, help="decoder_dim")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--text-vocab", type=int, default=512, help="text_token_num")
    parser.add_argument("--text-len", type=int, default=100, help="phones (prompt + target text)")
    parser.add_argument("--prompt-frames", type=int, default=225, help="3 s prompt = 225 frames")
    parser.add_argument("--compare-seconds", default="2,5", help="cached vs uncached lengths")
    parser.add_argument("--cached-seconds", default="10,20", help="cached-only lengths")
    parser.add_argument("--batch-size", type=int, default=8, help="0 = skip the batch cases")
    parser.add_argument("--batch-seconds", type=float, default=5.0, help="batch comparison length")
    args = parser.parse_args()

    device = timing.device_of(args)
    compare = [float(s) for s in args.compare_seconds.split(",") if s]
    cached_only = [float(s) for s in args.cached_seconds.split(",") if s]
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    timing.print_header(
        "VALL-E",
        device,
        args.dtype,
        f"decoder_dim={args.dim}, heads={args.heads}, layers={args.layers}, "
        f"{n_params / 1e6:.0f}M parameters (random), text {args.text_len} phones, "
        f"prompt {args.prompt_frames} frames",
    )
    frames_of = lambda s: round(s * FRAME_RATE)  # noqa: E731
    one = make_inputs(1, args, device, seed=0)
    run_case(model, one, 3, True, device)  # warm-up
    run_case(model, one, 3, False, device)

    lines = [
        "| case | output | batch | AR s | AR frames/s | AR+NAR s | AR+NAR frames/s | peak mem "
        "| load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    for seconds in compare:
        cached = run_case(model, one, frames_of(seconds), True, device)
        lines.append(row("AR cached", seconds, 1, cached))
        print(lines[-1], flush=True)
        uncached = run_case(model, one, frames_of(seconds), False, device)
        lines.append(row("AR uncached (reference)", seconds, 1, uncached))
        print(lines[-1], flush=True)
        ratios.append(
            f"KV cache speed-up at {seconds:g} s: AR {uncached['ar'] / cached['ar']:.1f}x, "
            f"AR+NAR {uncached['total'] / cached['total']:.1f}x"
        )
    for seconds in cached_only:
        lines.append(
            row("AR cached", seconds, 1, run_case(model, one, frames_of(seconds), True, device))
        )
        print(lines[-1], flush=True)

    if args.batch_size > 0:
        n = args.batch_size
        frames = frames_of(args.batch_seconds)
        batched = run_case(model, make_inputs(n, args, device, seed=1), frames, True, device)
        lines.append(row(f"batch {n} (cached)", args.batch_seconds, n, batched))
        print(lines[-1], flush=True)
        singles = timing.combine(
            [
                run_case(model, make_inputs(1, args, device, seed=100 + i), frames, True, device)
                for i in range(n)
            ]  # fmt: skip
        )
        lines.append(row(f"{n} x batch 1 (cached)", args.batch_seconds, 1, singles))
        print(lines[-1], flush=True)
        ratios.append(
            f"batch {n} vs {n} x batch 1 throughput at {args.batch_seconds:g} s: "
            f"AR {singles['ar'] / batched['ar']:.1f}x, "
            f"AR+NAR {singles['total'] / batched['total']:.1f}x"
        )

    print("\n" + "\n".join(lines))
    print()
    for r in ratios:
        print(r)
    memory_note = (
        "CUDA max_memory_allocated (weights included)"
        if device.type == "cuda"
        else "RSS growth over the level before each case (weights excluded)"
    )
    print(
        "targets: AR cached >= 15x uncached at 5 s; batch 8 >= 3x the throughput of batch 1. "
        f"Peak mem = {memory_note}. {timing.load_note()}"
    )


if __name__ == "__main__":
    main()
