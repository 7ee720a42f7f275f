"""ASR with a Whisper model through transformers (default openai/whisper-large-v3, the field's
current choice for TTS WER), from a hub id or a local folder. Audio past 30 s is cut off by
Whisper's feature extractor (TTS test utterances are 4-10 s)."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.backends import TransformersBackend


class Whisper(TransformersBackend):
    kind, name, default = "asr", "whisper", "openai/whisper-large-v3"
    loaders = ("WhisperProcessor", "WhisperForConditionalGeneration")
    half_on_cuda = True

    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        # A multilingual checkpoint is told the language; a model without language tokens is not.
        gen = self.model.generation_config
        self.generate_kwargs = (
            {"language": "en", "task": "transcribe"} if getattr(gen, "lang_to_id", None) else {}
        )

    @torch.inference_mode()
    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        inputs = self.processor(wavs, sampling_rate=16000, return_tensors="pt")  # (B, 80|128, 3000)
        feats = inputs.input_features.to(self.device, self.dtype)
        ids = self.model.generate(feats, **self.generate_kwargs)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


load = Whisper.load
