"""Parler-TTS decoding speed: KV cache vs recompute, batch 8 vs 8 x batch 1, side by side.

Random weights (no download), greedy, EOS logits forced to -inf so every item runs to the cap
(max_new_tokens columns = max_new_tokens + 1 - K audio frames at 86 frames/s). Smoke sizes by
default (seconds on a CPU); `--mini` = Parler-TTS Mini v1's decoder (1024 wide, 24 layers, 16
heads, 9 codebooks) with a small T5 (the text encoder runs once per utterance, not per step).

    python -m bench.parler_decode                  # smoke sizes
    python -m bench.parler_decode --mini --device cuda --dtype bfloat16 --steps 200,430
"""

from __future__ import annotations

import argparse

import torch

from bench import _timing as timing
from models.tts.parler.generate import generate
from models.tts.parler.parler import ParlerConfig, ParlerTTS

T5_SMALL = dict(
    vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
    feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new",
)  # fmt: skip


def build_model(args: argparse.Namespace, device: torch.device) -> ParlerTTS:
    if args.mini:
        dims = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096)
    else:
        dims = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024)
    cfg = ParlerConfig(text_encoder=T5_SMALL, prompt_vocab_size=512, num_codebooks=9, **dims)
    torch.manual_seed(0)
    model = ParlerTTS(cfg).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    timing.eos_off(cfg.eos_token_id, *model.decoder["lm_heads"])
    return model


def make_inputs(batch: int, args: argparse.Namespace, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    desc = torch.randint(2, 512, (batch, args.desc_len), generator=g)
    prompt = torch.randint(2, 512, (batch, args.prompt_len), generator=g)
    ones = torch.ones_like
    return tuple(t.to(device) for t in (desc, ones(desc), prompt, ones(prompt)))


def run_case(model, inputs, steps: int, use_cache: bool, device) -> dict:
    out, seconds = timing.timed(
        lambda: generate(model, *inputs, max_new_tokens=steps, use_cache=use_cache), device
    )
    frames = sum(r.undelayed.shape[-1] for r in out)
    assert all(r.stop == "cap" for r in out), "EOS forced off: every item must hit the cap"
    return dict(seconds=seconds, frames=frames)


def row(name: str, steps: int, batch: int, r: dict) -> str:
    speed = r["frames"] / r["seconds"]
    return timing.table_row(
        name, steps, batch, f"{r['seconds']:.2f}", f"{speed:.1f}", f"{timing.load_average():.1f}"
    )


def batch_cases(model, args: argparse.Namespace, device: torch.device, lines: list[str]) -> str:
    """Batch n vs n x batch 1 (cached), each item its own inputs; returns the ratio line."""
    n, steps = args.batch_size, args.batch_steps
    batched = run_case(model, make_inputs(n, args, device, seed=1), steps, True, device)
    lines.append(row(f"batch {n} (cached)", steps, n, batched))
    print(lines[-1], flush=True)
    single = timing.combine(
        [
            run_case(model, make_inputs(1, args, device, seed=100 + i), steps, True, device)
            for i in range(n)
        ]  # fmt: skip
    )
    lines.append(row(f"{n} x batch 1 (cached)", steps, 1, single))
    print(lines[-1], flush=True)
    return (
        f"batch {n} vs {n} x batch 1 throughput at {steps} steps: "
        f"{single['seconds'] / batched['seconds']:.1f}x"
    )


def main() -> None:
    parser = timing.bench_parser(__doc__)
    parser.add_argument("--mini", action="store_true", help="Parler-TTS Mini decoder size")
    parser.add_argument("--desc-len", type=int, default=24, help="description tokens")
    parser.add_argument("--prompt-len", type=int, default=40, help="transcript tokens")
    parser.add_argument("--steps", default="100", help="max_new_tokens, cached vs uncached")
    parser.add_argument("--batch-size", type=int, default=8, help="0 = skip the batch cases")
    parser.add_argument("--batch-steps", type=int, default=100, help="steps of the batch cases")
    args = parser.parse_args()

    device = timing.device_of(args)
    model = build_model(args, device)
    cfg = model.cfg
    decoder_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder"))
    timing.print_header(
        "Parler-TTS",
        device,
        args.dtype,
        f"decoder {cfg.hidden_size} wide x {cfg.num_hidden_layers} layers, "
        f"{cfg.num_attention_heads} heads, {cfg.num_codebooks} codebooks, "
        f"{decoder_params / 1e6:.0f}M decoder parameters (random), description "
        f"{args.desc_len} / transcript {args.prompt_len} tokens",
    )
    one = make_inputs(1, args, device, seed=0)
    run_case(model, one, 12, True, device)  # warm-up
    run_case(model, one, 12, False, device)
    lines = [
        "| case | steps | batch | s | frames/s | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    for steps in [int(s) for s in args.steps.split(",") if s]:
        cached = run_case(model, one, steps, True, device)
        lines.append(row("KV cache", steps, 1, cached))
        print(lines[-1], flush=True)
        recompute = run_case(model, one, steps, False, device)
        lines.append(row("recompute (no cache)", steps, 1, recompute))
        print(lines[-1], flush=True)
        ratios.append(
            f"KV cache speed-up at {steps} steps: {recompute['seconds'] / cached['seconds']:.1f}x"
        )
    if args.batch_size > 0:
        ratios.append(batch_cases(model, args, device, lines))
    print("\n" + "\n".join(lines) + "\n")
    for r in ratios:
        print(r)
    print(timing.load_note())


if __name__ == "__main__":
    main()
