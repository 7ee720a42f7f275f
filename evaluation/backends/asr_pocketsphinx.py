"""ASR with pocketsphinx: the US English acoustic model, dictionary and LM ship in its wheel, so
it runs with no download. Weak (WER 0.5-1.0 on espeak speech): a smoke-level fallback."""

from __future__ import annotations

import numpy as np

from evaluation.backends import pkg


class PocketSphinx:
    name = "pocketsphinx"

    def __init__(self):
        from pocketsphinx import Decoder

        # Default en-us model; batch CMN: an utterance's result does not depend on the ones before.
        self.decoder = Decoder(samprate=16000, logfn="/dev/null", cmn="batch")
        self.version = f"{pkg('pocketsphinx')} (en-us model inside the wheel)"

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        out = []
        for wav in wavs:
            pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out


def load(model: str = "", device: str = "cpu") -> PocketSphinx:
    if model:
        raise ValueError("pocketsphinx uses the model inside its wheel; give no model path")
    return PocketSphinx()
