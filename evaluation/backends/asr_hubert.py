"""ASR with a CTC model through transformers: HuBERT-large fine-tuned on LibriSpeech 960 h
(facebook/hubert-large-ls960-ft, the VALL-E paper's ASR), from a hub id or a local folder.
Greedy CTC decoding, as the paper's WER."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.backends import TransformersBackend


class HubertCTC(TransformersBackend):
    kind, name, default = "asr", "hubert", "facebook/hubert-large-ls960-ft"
    loaders = ("Wav2Vec2Processor", "HubertForCTC")

    @torch.inference_mode()
    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        inputs = self.processor(
            wavs, sampling_rate=16000, return_tensors="pt", padding=True, return_attention_mask=True
        )
        mask = inputs.attention_mask.to(self.device)
        logits = self.model(inputs.input_values.to(self.device), attention_mask=mask).logits
        ids = logits.argmax(-1).cpu()  # (B, frames)
        # Frames of the padding are not the utterance's: decode each item's own frames only.
        lengths = self.model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
        pairs = zip(ids, lengths, strict=True)
        return [self.processor.decode(row[: int(n)]).strip() for row, n in pairs]


load = HubertCTC.load
