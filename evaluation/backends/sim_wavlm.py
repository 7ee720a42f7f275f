"""Speaker embeddings with WavLM + x-vector head through transformers (default
microsoft/wavlm-base-plus-sv), from a hub id or a local folder. The VALL-E paper's SIM uses
WavLM-large + ECAPA-TDNN (UniSpeech repository), which transformers does not ship: numbers are
close in spirit, not identical."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.backends import TransformersBackend


class WavLMSV(TransformersBackend):
    kind, name, default = "sim", "wavlm", "microsoft/wavlm-base-plus-sv"
    loaders = ("AutoFeatureExtractor", "WavLMForXVector")

    @torch.inference_mode()
    def embed(self, wavs: list[np.ndarray]) -> np.ndarray:
        out = []
        for wav in wavs:  # one at a time: padding would change the x-vector statistics
            inputs = self.processor(wav, sampling_rate=16000, return_tensors="pt")
            emb = self.model(inputs.input_values.to(self.device)).embeddings  # (1, D)
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1)[0].cpu().numpy())
        return np.stack(out)


load = WavLMSV.load
