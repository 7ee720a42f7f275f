"""Speaker embeddings with WavLM + x-vector head through transformers (default
microsoft/wavlm-base-plus-sv), from a hub id or a local folder. The VALL-E paper's SIM uses
WavLM-large + ECAPA-TDNN (UniSpeech repository), which transformers does not ship: numbers are
close in spirit, not identical."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.backends import load_transformers

DEFAULT = "microsoft/wavlm-base-plus-sv"


class WavLMSV:
    name = "wavlm"

    def __init__(self, model: str, device: str):
        from transformers import AutoFeatureExtractor, WavLMForXVector

        self.device = torch.device(device)
        loaders = (AutoFeatureExtractor, WavLMForXVector)
        self.extractor, self.model, self.version = load_transformers(
            "sim", "wavlm", model, loaders, self.device
        )

    @torch.inference_mode()
    def embed(self, wavs: list[np.ndarray]) -> np.ndarray:
        out = []
        for wav in wavs:  # one at a time: padding would change the x-vector statistics
            inputs = self.extractor(wav, sampling_rate=16000, return_tensors="pt")
            emb = self.model(inputs.input_values.to(self.device)).embeddings  # (1, D)
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1)[0].cpu().numpy())
        return np.stack(out)


def load(model: str = "", device: str = "cpu") -> WavLMSV:
    return WavLMSV(model or DEFAULT, device)
