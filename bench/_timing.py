"""What the decode benchmarks share: device set-up, EOS forced off, synchronised timing, peak
memory, the combination of N single runs, the report's header, rows and load-average note."""

from __future__ import annotations

import argparse
import os
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import torch


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser (description = the first paragraph of `doc`) with --device, --dtype
    and --threads; `device_of` applies them."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    return p


def device_of(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def eos_off(eos_id: int, *heads: torch.nn.Module) -> None:
    """Fixed output length: the heads' logits of `eos_id` become -inf, so the EOS decision never
    fires and every item decodes up to its cap."""

    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos_id] = float("-inf")
        return logits

    for head in heads:
        head.register_forward_hook(hook)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), its wall-clock seconds), the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def print_header(title: str, device: torch.device, dtype: str, what: str) -> None:
    """The first line of a report: what ran where (`what` = model and input sizes)."""
    print(
        f"# {title} decode benchmark: device={device} ({torch.get_num_threads()} threads), "
        f"dtype={dtype}, {what}, greedy, EOS forced off, torch {torch.__version__}",
        flush=True,
    )


def table_row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def load_average() -> float:
    """The 1-minute load average now (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


LOAD_NOTE = (
    "Load = 1-minute load average at the end of the case ({cpus} CPUs; other jobs on the machine "
    "slow every figure)."
)


def load_note() -> str:
    return LOAD_NOTE.format(cpus=os.cpu_count())


def combine(runs: list[dict]) -> dict:
    """N x batch 1 as one row: times and frames add up, "peak" and "load" are the largest of
    the runs, lists (e.g. codes) are concatenated."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key in ("peak", "load"):
            out[key] = max(values)
        elif isinstance(values[0], list):
            out[key] = [v for value in values for v in value]
        else:
            out[key] = sum(values)
    return out


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
