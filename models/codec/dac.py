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

import hashlib
import json
import logging
import math
import os
import re
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
ARCHITECTURE_KEYS = ("encoder_hidden_size", "downsampling_ratios", "decoder_hidden_size",
                     "upsampling_ratios", "hidden_size", "n_codebooks", "codebook_size",
                     "codebook_dim", "sampling_rate")  # fmt: skip
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
        return self.source.get("source") == "random_init" or bool(self.source.get("random_init"))

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
    def from_parler_checkpoint(
        cls, folder: str | os.PathLike, num_codebooks: int | None = None
    ) -> DacCodec:
        """The DAC stored inside a released-layout Parler-TTS folder: config.json's
        `audio_encoder` + the `audio_encoder.*` tensors of model.safetensors (or its shards).
        A folder whose config.json says `codectts_random_init` is labelled random-init."""
        from transformers import DacConfig, DacModel

        folder = Path(folder)
        try:
            hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            enc = hf["audio_encoder"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CodecError(
                f"{folder / 'config.json'}: no Parler-TTS config with an audio_encoder "
                f"({type(e).__name__}: {e})"
            ) from None
        if enc.get("model_type") not in ("dac_on_the_hub", "dac"):
            raise CodecError(f"{folder}: audio_encoder is {enc.get('model_type')!r}, not a DAC")
        state = _read_prefixed(folder, PACKAGE_PREFIX)
        if not state:
            raise CodecError(
                f"{folder}: the checkpoint holds no {PACKAGE_PREFIX}* (DAC) weights; name a "
                f"DacModel folder or hub id instead (preprocess.codec, e.g. {OFFICIAL!r})"
            )
        ours = dac_state_from_package(state)
        model = DacModel(DacConfig(**dac_config_from_state(ours, int(enc["sampling_rate"]))))
        result = model.load_state_dict(ours, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CodecError(
                f"{folder}: DAC weights do not fit a DacModel: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        n = num_codebooks or int(enc.get("num_codebooks", model.config.n_codebooks))
        random_init = bool(hf.get("codectts_random_init", False))
        source = {"source": "parler_checkpoint", "id": str(folder), "random_init": random_init}
        return cls(model, n, source)

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

    def fingerprint(self) -> str:
        """sha256 of the weights, the configuration and the codebooks used: equal fingerprints
        give equal codes (stage-1 bookkeeping)."""
        cfg = self.model.config  # its architecture only (save_pretrained adds bookkeeping keys)
        arch = {k: getattr(cfg, k) for k in ARCHITECTURE_KEYS}
        h = hashlib.sha256(json.dumps([arch, self.num_codebooks], sort_keys=True).encode())
        for key, value in sorted(self.model.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

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


# -------------------------------------------------------------------------------------------
# The DAC stored inside a released Parler-TTS checkpoint
# -------------------------------------------------------------------------------------------
# The parler-tts package wraps descript-audio-codec's `DAC` as `audio_encoder.model`, so its
# checkpoints store the codec under descript's module names with weight norm split into
# `weight_g` / `weight_v` (or, saved by a newer torch, `parametrizations.weight.original0/1`).
# The correspondence is the one transformers' DAC conversion script implements: descript
# `encoder.block.0` = conv1, `encoder.block.i.block.j.block.k` = block i-1, residual unit j+1,
# layer k; `encoder.block.i.block.3/4` = the block's snake / strided conv; the last two
# `encoder.block.*` = final snake / conv; the decoder likewise under `decoder.model.*` (residual
# units j-1; `block.0/1` = snake / transposed conv).
PACKAGE_PREFIX = "audio_encoder.model."
_RES = ("snake1", "conv1", "snake2", "conv2")  # layers of a residual unit, in descript's order
_WEIGHT_NORM = {"weight_g": "g", "weight_v": "v", "parametrizations.weight.original0": "g",
                "parametrizations.weight.original1": "v"}  # fmt: skip
_I = r"(\d+)"
# How descript lays out each side of the codec: its container, (descript residual-unit index)
# - (ours), the index of a block's snake, our name and descript's index of a block's strided conv.
_LAYOUT = {
    "encoder": ("encoder.block", -1, 3, "conv1", 4),
    "decoder": ("decoder.model", +1, 0, "conv_t1", 1),
}


def _ours_rules(side: str) -> list:
    """(descript module regex, DacModel module from the groups) of one side; `last` = the side's
    final snake or conv."""
    outer, unit_offset, snake_at, conv, conv_at = _LAYOUT[side]
    o = re.escape(outer)
    return [
        (rf"{o}\.0", lambda last: f"{side}.conv1"),
        (rf"{o}\.{_I}\.block\.{_I}\.block\.([0-3])",
         lambda last, i, j, k: f"{side}.block.{i - 1}.res_unit{j - unit_offset}.{_RES[k]}"),
        (rf"{o}\.{_I}\.block\.{snake_at}", lambda last, i: f"{side}.block.{i - 1}.snake1"),
        (rf"{o}\.{_I}\.block\.{conv_at}", lambda last, i: f"{side}.block.{i - 1}.{conv}"),
        (rf"{o}\.{_I}", lambda last, i: f"{side}.{last}"),
    ]  # fmt: skip


def _package_rules(side: str, n_blocks: int) -> list:
    """The inverse of `_ours_rules(side)`: (DacModel module regex, descript module)."""
    outer, unit_offset, snake_at, conv, conv_at = _LAYOUT[side]
    return [
        (rf"{side}\.conv1", lambda: f"{outer}.0"),
        (rf"{side}\.block\.{_I}\.res_unit{_I}\.(\w+)",
         lambda i, j, layer: f"{outer}.{i + 1}.block.{j + unit_offset}.block.{_RES.index(layer)}"),
        (rf"{side}\.block\.{_I}\.snake1", lambda i: f"{outer}.{i + 1}.block.{snake_at}"),
        (rf"{side}\.block\.{_I}\.{conv}", lambda i: f"{outer}.{i + 1}.block.{conv_at}"),
        (rf"{side}\.snake1", lambda: f"{outer}.{n_blocks + 1}"),
        (rf"{side}\.conv2", lambda: f"{outer}.{n_blocks + 2}"),
    ]  # fmt: skip


_TO_OURS = [
    *_ours_rules("encoder"),
    *_ours_rules("decoder"),
    (rf"quantizer\.quantizers\.{_I}\.(in_proj|out_proj|codebook)",
     lambda last, i, name: f"quantizer.quantizers.{i}.{name}"),
]  # fmt: skip


def _match(rules: list, module: str, *first):
    """The mapped name of the first rule whose regex matches all of `module` (else None)."""
    for pattern, make in rules:
        if m := re.fullmatch(pattern, module):
            return make(*first, *(int(g) if g.isdigit() else g for g in m.groups()))
    return None


def _split_param(name: str) -> tuple[str, str]:
    """`module.path.weight_g` -> ("module.path", "weight_g")."""
    for suffix in _WEIGHT_NORM:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    module, _, param = name.rpartition(".")
    return module, param


def dac_state_from_package(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """descript / parler-tts DAC tensors (prefix removed) -> DacModel state dict, weight norm
    folded as torch's weight-norm hook computes it at run time (`torch._weight_norm(v, g, 0)`)."""
    ours: dict[str, torch.Tensor] = {}
    norm: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for name, value in state.items():
        module, param = _split_param(name)
        target = _match(_TO_OURS, module, "snake1" if param == "alpha" else "conv2")
        if target is None:
            unknown.append(name)
        elif param in _WEIGHT_NORM:
            norm.setdefault(f"{target}.weight", {})[_WEIGHT_NORM[param]] = value
        else:
            ours[f"{target}.{param}"] = value
    broken = sorted(k for k, gv in norm.items() if set(gv) != {"g", "v"})
    if unknown or broken:
        raise CodecError(
            f"not a descript DAC state: unknown tensors {unknown[:5]} ({len(unknown)}), "
            f"weight norm without its g/v partner {broken[:5]}"
        )
    for key, gv in norm.items():
        ours[key] = torch._weight_norm(gv["v"], gv["g"], 0)
    return ours


def package_state_from_dac(model) -> dict[str, torch.Tensor]:
    """The inverse (DacModel -> descript names, weight_g / weight_v, no prefix): how a DAC sits
    inside a Parler-TTS checkpoint (the tiny random model folder is written this way)."""
    to_package = [
        *_package_rules("encoder", len(model.encoder.block)),
        *_package_rules("decoder", len(model.decoder.block)),
        (r"(quantizer\.quantizers\.\d+\.\w+)", lambda same: same),
    ]
    out = {}
    for key, value in model.state_dict().items():
        module, param = key.rsplit(".", 1)
        target = _match(to_package, module)
        if param == "weight" and not module.endswith("codebook"):  # weight-normed in descript
            out[f"{target}.weight_g"] = torch.norm_except_dim(value, 2, 0)
            out[f"{target}.weight_v"] = value.clone()
        else:
            out[f"{target}.{param}"] = value.clone()
    return out


def dac_config_from_state(state: dict[str, torch.Tensor], sampling_rate: int) -> dict:
    """DacConfig arguments read off the tensor shapes (the package's audio_encoder config names
    only codebooks, latent size and rate; the network sizes are implied by the weights)."""
    n_enc = sum(1 for k in state if re.fullmatch(r"encoder\.block\.\d+\.conv1\.weight", k))
    n_dec = sum(1 for k in state if re.fullmatch(r"decoder\.block\.\d+\.conv_t1\.weight", k))
    n_q = sum(1 for k in state if re.fullmatch(r"quantizer\.quantizers\.\d+\.codebook\.weight", k))
    codebook = state["quantizer.quantizers.0.codebook.weight"]
    return dict(
        encoder_hidden_size=state["encoder.conv1.weight"].shape[0],
        downsampling_ratios=[state[f"encoder.block.{i}.conv1.weight"].shape[2] // 2
                             for i in range(n_enc)],
        decoder_hidden_size=state["decoder.conv1.weight"].shape[0],
        upsampling_ratios=[state[f"decoder.block.{i}.conv_t1.weight"].shape[2] // 2
                           for i in range(n_dec)],
        hidden_size=state["encoder.conv2.weight"].shape[0],
        n_codebooks=n_q, codebook_size=codebook.shape[0], codebook_dim=codebook.shape[1],
        sampling_rate=sampling_rate,
    )  # fmt: skip


def _read_prefixed(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix` (removed), from model.safetensors or the
    shards its index names; only those tensors are read."""
    from safetensors import safe_open

    files = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not files[0].is_file() and index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({folder / f for k, f in weight_map.items() if k.startswith(prefix)})
    out = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix) :]] = f.get_tensor(key)
        except Exception as e:  # missing, truncated or corrupt file
            raise CodecError(
                f"{file}: cannot read the DAC weights ({type(e).__name__}: {e})"
            ) from None
    return out
