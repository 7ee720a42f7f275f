"""Released Parler-TTS folders: HF `config.json` + `model.safetensors` + tokenizer files.

`load_pretrained(source)` takes a local folder or a hub id (`parler-tts/parler-tts-mini-v1`,
fetched with `huggingface_hub.snapshot_download`, only the files listed in ALLOW_PATTERNS). Keys
load strictly: every parameter of our model must be in the file and every key of the file must
be ours, except `audio_encoder.*` (the DAC the package stores inside its checkpoint; our codec is
`models/codec/dac.py`). T5's tied `shared` / `encoder.embed_tokens` pair may be stored once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from models.tts.parler.parler import ParlerConfig, ParlerTTS
from utils.hub import HubError, local_snapshot

log = logging.getLogger(__name__)

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
]
TIED = ("text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight")
# Decoder options of the package this implementation does not have; the value it supports.
UNSUPPORTED = {
    "rope_embeddings": False,
    "use_fused_lm_heads": False,
    "scale_embedding": False,
    "codebook_weights": None,
    "cross_attention_implementation_strategy": None,
    "activation_function": "gelu",
}


class ParlerLoadError(RuntimeError):
    """A Parler-TTS folder cannot be used; the message names the file and what to do."""


def config_from_hf(hf: dict, path: Path) -> ParlerConfig:
    """The package's config.json (dict) -> ParlerConfig; unsupported features are refused."""
    try:
        dec = hf["decoder"]
        if hf.get("model_type") != "parler_tts":
            raise ValueError(f"model_type is {hf.get('model_type')!r}, expected 'parler_tts'")
        if hf.get("prompt_cross_attention", False):
            raise ValueError("prompt_cross_attention = true is not supported")
        for key, supported in UNSUPPORTED.items():
            if dec.get(key, supported) != supported:
                raise ValueError(f"decoder.{key} = {dec[key]!r} is not supported ({supported!r})")
        heads = dec["num_attention_heads"]
        for key in ("num_key_value_heads", "num_cross_attention_key_value_heads"):
            if dec.get(key) not in (None, heads):
                raise ValueError(f"decoder.{key} = {dec[key]} != {heads} heads (GQA unsupported)")
        return ParlerConfig(
            text_encoder=dict(hf["text_encoder"]),
            prompt_vocab_size=int(hf["vocab_size"]),
            num_codebooks=int(dec["num_codebooks"]),
            vocab_size=int(dec["vocab_size"]),
            hidden_size=int(dec["hidden_size"]),
            num_hidden_layers=int(dec["num_hidden_layers"]),
            num_attention_heads=int(heads),
            ffn_dim=int(dec["ffn_dim"]),
            max_position_embeddings=int(dec["max_position_embeddings"]),
            dropout=float(dec.get("dropout", 0.1)),
            attention_dropout=float(dec.get("attention_dropout", 0.0)),
            activation_dropout=float(dec.get("activation_dropout", 0.0)),
            pad_token_id=int(dec["pad_token_id"]),
            eos_token_id=int(dec["eos_token_id"]),
            bos_token_id=int(hf.get("decoder_start_token_id", dec["bos_token_id"])),
        )
    except KeyError as e:
        raise ParlerLoadError(f"{path}: missing key {e} (not a parler-tts config.json)") from None
    except (ValueError, TypeError) as e:
        raise ParlerLoadError(f"{path}: {e}") from None


def read_config(folder: Path) -> ParlerConfig:
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParlerLoadError(f"{path} not found: {missing_help(folder)}") from None
    except json.JSONDecodeError as e:
        raise ParlerLoadError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    return config_from_hf(hf, path)


def missing_help(folder: Path) -> str:
    return (
        f"a Parler-TTS folder holds config.json, model.safetensors (or model-*-of-*.safetensors "
        f"+ model.safetensors.index.json) and the tokenizer files (tokenizer.json, "
        f"tokenizer_config.json, special_tokens_map.json, spiece.model); place them in {folder}"
    )


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors or of the shards an index names."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.is_file() and not files[0].is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [folder / n for n in names]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ParlerLoadError(f"{f} not found: {missing_help(folder)}")
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # safetensors raises SafetensorError for truncated/corrupt files
            raise ParlerLoadError(
                f"{f} is corrupt or incomplete ({type(e).__name__}: {e}); download it again"
            ) from None
    return state


def load_state(model: ParlerTTS, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load (see the module docstring); a mismatch names the keys and the file."""
    state = {k: v for k, v in state.items() if not k.startswith("audio_encoder.")}
    for a, b in (TIED, TIED[::-1]):
        if a in state and b not in state:
            state[b] = state[a]
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
             for k, v in ours.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise ParlerLoadError(
            f"{path} does not match the architecture of its config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            f"({len(unexpected)}), wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)


def resolve_folder(source: str | Path) -> Path:
    """A local folder, or a hub id fetched into the hub cache (offline: a clear error)."""
    try:
        return local_snapshot(str(source), ALLOW_PATTERNS, what="Parler-TTS model")
    except HubError as e:
        raise ParlerLoadError(f"{e}; {missing_help(Path('<folder>'))}") from None


def load_pretrained(source: str | Path, device: str | torch.device = "cpu") -> ParlerTTS:
    """ParlerTTS from a released folder or hub id, float32, eval mode, text encoder frozen."""
    folder = resolve_folder(source)
    cfg = read_config(folder)
    model = ParlerTTS(cfg)
    load_state(model, read_weights(folder), folder / "model.safetensors")
    model.freeze_text_encoder()
    return model.to(device).eval()


def load_tokenizer(source: str | Path):
    """The T5 tokenizer of a released folder (descriptions and transcripts use the same one)."""
    from transformers import AutoTokenizer

    folder = resolve_folder(source)
    if not (folder / "tokenizer.json").is_file():  # spiece.model alone needs sentencepiece
        raise ParlerLoadError(f"{folder / 'tokenizer.json'} not found: {missing_help(folder)}")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # OSError, ValueError, KeyError (unknown model_type) ...
        raise ParlerLoadError(
            f"{folder}: no usable tokenizer ({type(e).__name__}: {e}); {missing_help(folder)}"
        ) from None
