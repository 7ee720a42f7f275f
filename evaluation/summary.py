"""summary.json / summary.md of scored utterances, and tensorboard scalars for an experiment.

Corpus-level WER and CER (total edits / total reference words or characters), means of the other
metrics; a metric that was not computed is `null` in JSON and "n/a" in the table, never a number.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.fileio import atomic_write_text

MEANS = ("sim_o", "sim_r", "sim_speaker", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
COLUMNS = [  # (summary key, table header, scale)
    ("wer", "WER %", 100.0),
    ("cer", "CER %", 100.0),
    ("sim_o", "SIM-o", 1.0),
    ("sim_r", "SIM-r", 1.0),
    ("sim_speaker", "SIM-spk", 1.0),  # outputs naming the same speaker (no prompt audio)
    ("dnsmos_sig", "DNSMOS SIG", 1.0),
    ("dnsmos_bak", "BAK", 1.0),
    ("dnsmos_ovrl", "OVRL", 1.0),
    ("dnsmos_p808", "P.808", 1.0),
]


def _ratio(records: list[dict], errors: str, total: str) -> float | None:
    rows = [r for r in records if r.get(errors) is not None]
    denominator = sum(r[total] for r in rows)
    return sum(r[errors] for r in rows) / denominator if denominator else None


def summarise(records: list[dict], failures: list[dict], backends: dict) -> dict:
    """Summary of the scored records (those with "error" count as failed, with `failures`)."""
    ok = [r for r in records if "error" not in r]
    failed = [{"name": r["name"], "error": r["error"]} for r in records if "error" in r]
    failed += failures
    summary: dict = {"n": len(ok), "n_failed": len(failed)}
    summary["wer"] = _ratio(ok, "wer_errors", "wer_words")
    summary["cer"] = _ratio(ok, "cer_errors", "cer_chars")
    for key in MEANS:
        values = [r[key] for r in ok if r.get(key) is not None]
        summary[key] = sum(values) / len(values) if values else None
    summary["backends"] = backends
    summary["failed"] = failed
    return summary


def _cell(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value * scale:.2f}" if scale != 1 else f"{value:.3f}"


def markdown(summary: dict, title: str) -> str:
    """A table to paste into a paper or an issue, with the backends below it."""
    head = ["system", "n", "failed"] + [h for _, h, _ in COLUMNS]
    row = [title, str(summary["n"]), str(summary["n_failed"])]
    row += [_cell(summary[k], s) for k, _, s in COLUMNS]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(row) + " |",
    ]
    lines.append("")
    lines += [f"- {kind}: {what}" for kind, what in summary["backends"].items()]
    lines += [f"- FAILED {f['name']}: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict, title: str) -> str:
    """Write OUT/summary.json and OUT/summary.md (atomically); returns the markdown."""
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    table = markdown(summary, title)
    atomic_write_text(out_dir / "summary.md", table)
    return table


def write_tensorboard(log_dir: Path, summary: dict, tag: str, step: int) -> None:
    """eval/<tag>/<metric> scalars at the checkpoint's step (computed metrics only)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for key, _, _ in COLUMNS:
            if summary[key] is not None:
                writer.add_scalar(f"eval/{tag}/{key}", summary[key], step)
