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
import os
import re
import resource
import time

import torch

from models.tts.valle import generation
from models.tts.valle.valle import VALLE
from utils.config import ModelConfig

FRAME_RATE = 75  # EnCodec 24 kHz frames per second


class PeakMemory:
    """Peak memory of the block: CUDA allocator peak, or on Linux the resident-set high-water
    mark (reset through /proc/self/clear_refs) above the resident set at the start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._base_kib = self._status_kib("VmRSS")
        except OSError:
            self._base_kib = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._base_kib is not None:
            self.peak_bytes = (self._status_kib("VmHWM") - self._base_kib) * 1024
        else:  # whole-process peak (KiB on Linux)
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    eos = model.eos_id

    def eos_off(module, inputs, logits):  # fixed output length: the EOS decision never fires
        logits = logits.clone()
        logits[..., eos] = float("-inf")
        return logits

    model.ar_predict_layer.register_forward_hook(eos_off)
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(
    model: VALLE, inputs: tuple, frames: int, use_kv_cache: bool, device: torch.device
) -> dict:
    """One generate() call; the NAR share is timed by wrapping generation.nar_generate."""
    nar_seconds = [0.0]
    nar = generation.nar_generate

    def timed_nar(*a, **k):
        sync(device)
        start = time.perf_counter()
        out = nar(*a, **k)
        sync(device)
        nar_seconds[0] += time.perf_counter() - start
        return out

    generation.nar_generate = timed_nar
    try:
        with PeakMemory(device) as mem:
            sync(device)
            start = time.perf_counter()
            result = model.generate(*inputs, max_new_frames=frames, use_kv_cache=use_kv_cache)
            sync(device)
            total = time.perf_counter() - start
    finally:
        generation.nar_generate = nar
    generated = sum(len(c) for c in result.codes)
    assert generated == frames * inputs[0].shape[0], "EOS forced off: every item must hit the cap"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return dict(
        total=total, ar=total - nar_seconds[0], frames=generated, peak=mem.peak_bytes, load=load
    )


def combine(runs: list[dict]) -> dict:
    """8 x batch 1: times and frames add up, memory is the largest single peak."""
    return dict(
        total=sum(r["total"] for r in runs),
        ar=sum(r["ar"] for r in runs),
        frames=sum(r["frames"] for r in runs),
        peak=max(r["peak"] for r in runs),
        load=max(r["load"] for r in runs),
    )


def row(name: str, seconds: float, batch: int, r: dict) -> str:
    mib = r["peak"] / 2**20
    return (
        f"| {name} | {seconds:g} s | {batch} | {r['ar']:.2f} | {r['frames'] / r['ar']:.1f} | "
        f"{r['total']:.2f} | {r['frames'] / r['total']:.1f} | {mib:.0f} MiB | {r['load']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    compare = [float(s) for s in args.compare_seconds.split(",") if s]
    cached_only = [float(s) for s in args.cached_seconds.split(",") if s]
    model = build_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# VALL-E decode benchmark: device={device} ({torch.get_num_threads()} threads), "
        f"dtype={args.dtype}, decoder_dim={args.dim}, heads={args.heads}, layers={args.layers}, "
        f"{n_params / 1e6:.0f}M parameters (random), text {args.text_len} phones, "
        f"prompt {args.prompt_frames} frames, greedy, EOS forced off, torch {torch.__version__}",
        flush=True,
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
        singles = combine(
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
        f"Peak mem = {memory_note}. Load = 1-minute load average at the end of the case "
        f"({os.cpu_count()} CPUs; other jobs on the machine slow every figure)."
    )


if __name__ == "__main__":
    main()
