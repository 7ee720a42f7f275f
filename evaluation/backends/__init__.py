"""Metric backends behind one small interface.

Each backend module has `load(model: str, device: str) -> backend`, where `model` is a hub id or
a local folder ("" = the backend's default) and the backend object has

* `name`: short name ("whisper", "pocketsphinx", ...) and `version`: what produced the numbers
  (package version + model id), written beside every number;
* one batch method over a list of 16 kHz mono float32 numpy arrays:
  ASR `transcribe(wavs) -> list[str]`, speaker `embed(wavs) -> np.ndarray (B, D)` (L2-normalised),
  MOS `score(wavs) -> list[dict[str, float]]`.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import version as package_version
from pathlib import Path

SAMPLE_RATE = 16000  # every backend scores 16 kHz audio

MODULES = {
    ("asr", "whisper"): "evaluation.backends.asr_whisper",
    ("asr", "hubert"): "evaluation.backends.asr_hubert",
    ("asr", "pocketsphinx"): "evaluation.backends.asr_pocketsphinx",
    ("sim", "wavlm"): "evaluation.backends.sim_wavlm",
    ("sim", "resemblyzer"): "evaluation.backends.sim_resemblyzer",
    ("mos", "dnsmos"): "evaluation.backends.mos_dnsmos",
}
OFFLINE = {"asr": "pocketsphinx", "sim": "resemblyzer", "mos": "dnsmos"}
OPTION = {"asr": "--eval_asr", "sim": "--eval_sim", "mos": "--eval_mos"}


class BackendError(RuntimeError):
    """A backend cannot be loaded; the message names the model, where it was looked for and
    the offline backend to use instead."""


@functools.cache
def load_backend(kind: str, name: str, model: str = "", device: str = "cpu"):
    """The `name` backend of metric `kind` ("asr", "sim", "mos"), loaded once per process."""
    module = importlib.import_module(MODULES[(kind, name)])
    return module.load(model, device)


def pkg(name: str) -> str:
    return f"{name} {package_version(name)}"


def load_transformers(
    kind: str, backend: str, model: str, loaders: tuple, device, dtype=None
) -> tuple[object, object, str]:
    """A transformers (processor, network) pair from a hub id or a local folder: `loaders` =
    (processor class, model class), each `from_pretrained(model)`; the network moved to
    `device` (and `dtype`) in eval mode; plus the version string written beside the numbers.

    A failure becomes a BackendError that says where the model was looked for and which offline
    backend works without it."""
    processor_cls, model_cls = loaders
    local = Path(os.path.expanduser(model))
    source = str(local) if local.exists() else model
    try:
        processor = processor_cls.from_pretrained(source)
        network = model_cls.from_pretrained(source)
    except Exception as e:  # OSError offline / missing files, ValueError bad config, ...
        from huggingface_hub.constants import HF_HUB_CACHE

        where = (
            f"the local folder {local}"
            if local.exists()
            else f"the Hugging Face hub and the local cache {HF_HUB_CACHE} "
            f"(no local folder {local.resolve()} either)"
        )
        raise BackendError(
            f"cannot load the {backend} model '{model}' ({type(e).__name__}: {e}); looked in "
            f"{where}. Offline: download it where there is internet (huggingface-cli download "
            f"{model} --local-dir DIR), copy DIR here and pass its path as the model, or use the "
            f"offline backend: {OPTION[kind]} {OFFLINE[kind]}"
        ) from None
    network.to(device=device, dtype=dtype).eval()
    return processor, network, f"{pkg('transformers')} {model}"


class TransformersBackend:
    """A backend over one transformers (processor, model) pair, named in the subclass:
    `kind` ("asr", "sim"), `name`, `default` (hub id), `loaders` (the two transformers class
    names) and `half_on_cuda` (fp16 on a GPU, fp32 elsewhere; otherwise the dtype as loaded).
    `load(model, device)` is the module's `load`."""

    kind: str
    name: str
    default: str
    loaders: tuple[str, str]
    half_on_cuda = False

    def __init__(self, model: str, device: str):
        import torch
        import transformers

        self.device = torch.device(device)
        half = self.device.type == "cuda"
        self.dtype = (torch.float16 if half else torch.float32) if self.half_on_cuda else None
        loaders = tuple(getattr(transformers, n) for n in self.loaders)
        self.processor, self.model, self.version = load_transformers(
            self.kind, self.name, model, loaders, self.device, self.dtype
        )

    @classmethod
    def load(cls, model: str = "", device: str = "cpu") -> TransformersBackend:
        return cls(model or cls.default, device)
