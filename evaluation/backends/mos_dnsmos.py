"""DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS with speechmos's ONNX models (inside its wheel)."""

from __future__ import annotations

import numpy as np

from evaluation.backends import pkg


class DNSMOS:
    name = "dnsmos"

    def __init__(self):
        from speechmos import dnsmos  # needs onnxruntime + librosa (pinned in requirements.txt)

        self.dnsmos = dnsmos
        self.version = f"{pkg('speechmos')} DNSMOS (onnxruntime {pkg('onnxruntime').split()[1]})"

    def score(self, wavs: list[np.ndarray]) -> list[dict[str, float]]:
        out = []
        for wav in wavs:
            r = self.dnsmos.run(np.clip(wav, -1.0, 1.0), sr=16000)
            out.append(
                {f"dnsmos_{k}": float(r[f"{k}_mos"]) for k in ("sig", "bak", "ovrl", "p808")}
            )
        return out


def load(model: str = "", device: str = "cpu") -> DNSMOS:
    if model:
        raise ValueError("dnsmos uses the ONNX models inside the speechmos wheel; give no path")
    return DNSMOS()
