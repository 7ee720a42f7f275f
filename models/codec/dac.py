"""DAC 44.1 kHz codec for Parler-TTS: wav -> (frames, n_q) codes and back, exact integers.

Implementation: transformers' `DacModel`. transformers is already pinned (the T5 text encoder
needs it), so the codec adds no dependency; the `descript-audio-codec` package would pull
`descript-audiotools`, whose torchaudio extension does not even import with our torch pin (see
the parler_tts_tiny fixture README).

Weight sources:
* `DacCodec.pretrained("descript/dac_44khz")` - the official 44.1 kHz model (9 codebooks of 1024,
  hop 512 = 86.1 frames/s, the codec of the released Parler-TTS models) from a hub id or a local
  folder holding its `config.json` + `model.safetensors` (transformers layout);
* `DacCodec.random_init(...)` - seeded random weights, a small network unless `full_size`; for
  tests and demos only: its codes and audio are MEANINGLESS (logged as such);
* `DacCodec.load(folder)` - a codec written by `save` (stage 1 saves a random-init one so that
  stage 3 decodes with the very same weights).

Exactness: DAC's convolutions look both ways, so zero-padding an utterance to a batch length
changes its last frames: `encode` runs one utterance at a time, padded on the right to a
multiple of the hop as DAC's own `preprocess` does (frames = ceil(samples / 512)); `decode` also
runs per utterance (a frame's samples depend on its neighbours).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path

import torch

from utils.fileio import atomic_write_text
from utils.hub import HubError, local_snapshot

log = logging.getLogger(__name__)

OFFICIAL = "descript/dac_44khz"
ALLOW_PATTERNS = ["config.json", "model.safetensors", "preprocessor_config.json"]
META = "dac.json"
RANDOM_INIT_WARNING = (
    "RANDOM-INIT DAC: the codec has random weights. Its codes and decoded audio are MEANINGLESS; "
    f"use it only for tests and the demo (the official codec: DacCodec.pretrained('{OFFICIAL}'))"
)


class CodecError(RuntimeError):
    """The codec cannot be built, loaded or used; the message says what to do."""


class DacCodec:
    """A frozen DacModel using its first `num_codebooks` codebooks."""

    def __init__(self, model, num_codebooks: int, source: dict):
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        if not 1 <= num_codebooks <= cfg.n_codebooks:
            raise CodecError(f"num_codebooks = {num_codebooks}: this DAC has {cfg.n_codebooks}")
        self.num_codebooks = num_codebooks
        self.sample_rate = int(cfg.sampling_rate)
        self.hop_length = int(cfg.hop_length)
        self.codebook_size = int(cfg.codebook_size)
        self.source = source
        if self.is_random_init:
            log.warning(RANDOM_INIT_WARNING)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_random_init(self) -> bool:
        return self.source.get("source") == "random_init"

    def to(self, device) -> DacCodec:
        self.model.to(device)
        return self

    # ---------------------------------------------------------------- construction
    @classmethod
    def pretrained(cls, source: str = OFFICIAL, num_codebooks: int = 9) -> DacCodec:
        """Official weights from a hub id or a local folder (config.json + model.safetensors)."""
        try:
            folder = local_snapshot(str(source), ALLOW_PATTERNS, what="DAC codec")
        except HubError as e:
            raise CodecError(
                f"{e}; the folder must hold config.json and model.safetensors"
            ) from None
        return cls(_from_folder(folder), num_codebooks, {"source": "pretrained", "id": str(source)})

    @classmethod
    def random_init(
        cls, num_codebooks: int = 9, seed: int = 0, full_size: bool = False
    ) -> DacCodec:
        """Seeded random weights (44.1 kHz, hop 512, codebooks of 1024); small unless full_size."""
        from transformers import DacConfig, DacModel

        small = dict(encoder_hidden_size=4, decoder_hidden_size=32, hidden_size=32)
        size = {} if full_size else small
        cfg = DacConfig(n_codebooks=num_codebooks, sampling_rate=44100, **size)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = DacModel(cfg)
        finally:
            torch.random.set_rng_state(state)
        return cls(model, num_codebooks, {"source": "random_init", "seed": seed})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DacCodec:
        """A codec written by `save`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            num_codebooks, source = int(meta["num_codebooks"]), meta["source"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CodecError(
                f"{folder / META}: not a saved DAC codec ({type(e).__name__}: {e}); "
                "rerun the stage that writes it"
            ) from None
        return cls(_from_folder(folder), num_codebooks, source)

    def save(self, folder: str | os.PathLike) -> Path:
        """Weights (transformers layout) + dac.json into `folder`; complete or not there at all."""
        folder = Path(folder)
        tmp = folder.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{folder.name}")
        try:
            self.model.save_pretrained(tmp)
            meta = {"format": "codectts-dac-1", "num_codebooks": self.num_codebooks}
            meta["source"] = self.source
            atomic_write_text(tmp / META, json.dumps(meta, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # ---------------------------------------------------------------- encode / decode
    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)

    @torch.no_grad()
    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """1-D float waveforms at 44.1 kHz -> one (frames, num_codebooks) int64 tensor each (CPU),
        frames = ceil(samples / hop)."""
        out = []
        for w in wavs:
            if w.dim() != 1 or w.numel() == 0:
                raise CodecError(f"encode expects non-empty 1-D waveforms, got {tuple(w.shape)}")
            pad = self.num_frames(w.numel()) * self.hop_length - w.numel()
            x = torch.nn.functional.pad(w.float().to(self.device), (0, pad))[None, None]
            codes = self.model.encode(x, n_quantizers=self.num_codebooks).audio_codes
            out.append(codes[0, : self.num_codebooks].t().cpu())  # (n_q, F) -> (F, n_q)
        return out

    @torch.no_grad()
    def decode(self, codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """(frames, num_codebooks) codes each -> 1-D float waveforms, frames * hop samples.

        Ids must be in [0, codebook_size): Parler's special ids (EOS/PAD 1024, BOS 1025, the
        unused 1026..1087) are dropped before the codec (`models/tts/parler/delay.codec_frames`);
        an id out of range here is refused instead of indexing out of the codebook. An item with
        no frame gives a single 0 sample, as in the package."""
        out = []
        for c in codes:
            if c.dim() != 2 or c.shape[1] != self.num_codebooks:
                raise CodecError(
                    f"decode expects (frames, {self.num_codebooks}), got {tuple(c.shape)}"
                )
            bad = int(((c < 0) | (c >= self.codebook_size)).sum())
            if bad:
                raise CodecError(
                    f"{bad} code(s) outside [0, {self.codebook_size}): drop frames holding special "
                    "ids first (models.tts.parler.delay.codec_frames)"
                )
            if c.shape[0] == 0:
                out.append(torch.zeros(1))
                continue
            wav = self.model.decode(audio_codes=c.t()[None].long().to(self.device)).audio_values
            out.append(wav.reshape(-1)[: c.shape[0] * self.hop_length].float().cpu())
        return out


def _from_folder(folder: Path):
    from transformers import DacModel

    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CodecError(
                f"{folder / name} not found: a DAC folder holds config.json and model.safetensors "
                f"(transformers layout, e.g. a download of https://huggingface.co/{OFFICIAL})"
            )
    try:
        return DacModel.from_pretrained(str(folder))
    except Exception as e:  # corrupt / truncated safetensors, wrong config ...
        raise CodecError(
            f"{folder}: cannot load the DAC ({type(e).__name__}: {str(e)[:300]}); the files are "
            "corrupt or not a transformers DacModel: download them again"
        ) from None
