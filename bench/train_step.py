"""Training throughput and peak memory of VALL-E at the released size (1024 / 16 heads / 12 layers).

    python -m bench.train_step [--batch 2] [--phones 40] [--frames 225] [--steps 3] [--device auto]

One fixed batch (B utterances of `--phones` phone ids and `--frames` codec frames; 225 frames = 3 s)
is trained for `--steps` timed steps after one warm-up step, for the AR stage (train_stage 1) and
the NAR stage (train_stage 2), each in a fresh process so that peak memory is that run's own:

    fwd+bwd frames/s   codec frames per second through forward + backward (the issue's figure)
    step s             forward + backward + clip + AdamW step
    peak memory        CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS of the process, and
                       how much of it training added on top of the built model + optimizer

Variants measured side by side in one run: fp32 and, on CUDA, bf16 autocast (the recipe's
`train.mixed_precision bf16`); `--grad_ckpt` adds fp32 with gradient checkpointing. The last
lines print the ratios against fp32.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

import torch

RELEASED = dict(decoder_dim=1024, nhead=16, num_decoder_layers=12, text_token_num=512)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trainable_model(train_stage: int, **size) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """VALL-E (`size`: VALLE keyword arguments) and the parameters the trainer trains in
    `train_stage` (the same `VALLE.set_train_stage` as models/tts/valle/trainer.build_model)."""
    from models.tts.valle.valle import VALLE
    from utils.config import ModelConfig

    model = VALLE(ModelConfig(**size, dropout=0.1, prefix_mode=1))
    return model, model.set_train_stage(train_stage)


def measure(variant: str, train_stage: int, args: argparse.Namespace, out: mp.Queue) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, params = trainable_model(train_stage, **RELEASED)
    model.to(device).train()
    model.set_gradient_checkpointing(variant == "fp32+ckpt")
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    B, S, T = args.batch, args.phones, args.frames
    x = torch.randint(3, 100, (B, S), generator=g).to(device)
    y = torch.randint(0, 1024, (B, T, 8), generator=g).to(device)
    x_lens = torch.full((B,), S, dtype=torch.long, device=device)
    y_lens = torch.full((B,), T, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16")
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    fwd_bwd, step_times = [], []
    built_rss = rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.steps + 1):  # step 0 = warm-up
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss_sum, _ = model(x, x_lens, y, y_lens, train_stage=train_stage, nar_stage=3,
                                generator=torch.Generator().manual_seed(i))  # fmt: skip
        (loss_sum / y_lens.sum()).backward()
        sync()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i:
            fwd_bwd.append(t1 - t0)
            step_times.append(time.perf_counter() - t0)
    frames = B * T
    result = {
        "variant": variant,
        "stage": {1: "AR", 2: "NAR"}[train_stage],
        "frames_per_s": frames / (sum(fwd_bwd) / len(fwd_bwd)),
        "step_s": sum(step_times) / len(step_times),
        "trainable_m": sum(p.numel() for p in params) / 1e6,
    }
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result.update(peak_mib=peak, added_mib=peak - built_rss)
    out.put(result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="utterances per batch")
    p.add_argument("--phones", type=int, default=40, help="phone ids per utterance")
    p.add_argument("--frames", type=int, default=225, help="codec frames per utterance")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--grad_ckpt", action="store_true", help="also fp32 + gradient checkpointing")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["fp32"] + (["bf16"] if args.device == "cuda" else [])
    variants += ["fp32+ckpt"] if args.grad_ckpt else []
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"VALL-E released size {RELEASED}, device {name}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    print(f"batch {args.batch} x ({args.phones} phones, {args.frames} frames), "
          f"{args.steps} timed steps after 1 warm-up")  # fmt: skip
    ctx = mp.get_context("spawn")  # fresh process per measurement: its own peak memory
    results = []
    for variant in variants:
        for stage in (1, 2):
            queue = ctx.Queue()
            proc = ctx.Process(target=measure, args=(variant, stage, args, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
    mem = "peak MiB (added)" if args.device == "cpu" else "peak MiB"
    print(f"{'variant':<10} {'stage':<5} {'trainable':>10} {'fwd+bwd frames/s':>17} "
          f"{'step s':>8} {mem:>18}")  # fmt: skip
    for r in results:
        memory = f"{r['peak_mib']:.0f}" + (f" ({r['added_mib']:.0f})" if "added_mib" in r else "")
        print(f"{r['variant']:<10} {r['stage']:<5} {r['trainable_m']:>9.1f}M "
              f"{r['frames_per_s']:>17.1f} {r['step_s']:>8.2f} {memory:>18}")  # fmt: skip
    base = {r["stage"]: r for r in results if r["variant"] == "fp32"}
    for r in results:
        if r["variant"] != "fp32":
            b = base[r["stage"]]
            speed = r["frames_per_s"] / b["frames_per_s"]
            memory = r["peak_mib"] / b["peak_mib"]
            print(f"{r['variant']} / fp32, {r['stage']}: throughput x{speed:.2f}, "
                  f"peak memory x{memory:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
