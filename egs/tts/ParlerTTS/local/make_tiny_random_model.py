#!/usr/bin/env python3
"""Write a tiny RANDOM-INIT Parler-TTS folder in the released layout (demo and tests only).

    python egs/tts/ParlerTTS/local/make_tiny_random_model.py OUT [--seed 0] [--num_codebooks 4]

OUT/ then holds what a released folder (e.g. parler-tts/parler-tts-mini-v1) holds:

    config.json         the package's ParlerTTSConfig layout (text_encoder = a 2-layer T5,
                        audio_encoder = DAC 44.1 kHz, decoder = a 2-layer Parler decoder), with
                        "codectts_random_init": true
    model.safetensors   every parameter under the package's names, including the tiny DAC as
                        audio_encoder.model.* (descript names, weight_g / weight_v)
    tokenizer.json      built here with the `tokenizers` library: characters of a fixed
    tokenizer_config.json  vocabulary (T5 specials <pad> 0, </s> 1, <unk> 2; "▁" marks word
    special_tokens_map.json  starts like T5's sentencepiece; "</s>" appended to every text)
    generation_config.json, README.txt (says that all of this is random)

Everything is random: the audio it generates, and the codes of its codec, are MEANINGLESS. It
is loadable by `models.tts.parler.pretrained.load_pretrained` / `load_tokenizer` and by
`models.codec.dac.DacCodec.from_parler_checkpoint`. Deterministic for a seed; written to a
temporary folder and renamed, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from models.codec.dac import PACKAGE_PREFIX, DacCodec, package_state_from_dac  # noqa: E402
from models.tts.parler.parler import ParlerTTS  # noqa: E402
from models.tts.parler.pretrained import read_config  # noqa: E402

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
VOCAB = SPECIALS + ["▁"] + list(string.ascii_letters + string.digits + string.punctuation)
README = """RANDOM-INIT Parler-TTS model (made by egs/tts/ParlerTTS/local/make_tiny_random_model.py,
seed {seed}). Every weight - T5 text encoder, decoder and the DAC codec - is random, and the
tokenizer is a character vocabulary built locally. Its audio and codes are MEANINGLESS: use it
only to test and demonstrate the pipeline. A real model: parler-tts/parler-tts-mini-v1.
"""


def build_tokenizer(folder: Path) -> int:
    """T5-style character tokenizer files in `folder`; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return len(VOCAB)


def hf_config(vocab_size: int, num_codebooks: int) -> dict:
    """The package's config.json layout (the entries its loader and ours read)."""
    t5 = dict(model_type="t5", vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
              num_heads=4, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
              is_gated_act=True, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, layer_norm_epsilon=1e-6, pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    dac = dict(model_type="dac_on_the_hub", num_codebooks=num_codebooks, codebook_size=1024,
               latent_dim=32, frame_rate=86, sampling_rate=44100, model_bitrate=8)  # fmt: skip
    decoder = dict(model_type="parler_tts_decoder", vocab_size=1088, hidden_size=32,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   num_cross_attention_key_value_heads=4, ffn_dim=64, activation_function="gelu",
                   max_position_embeddings=4096, num_codebooks=num_codebooks, pad_token_id=1024,
                   eos_token_id=1024, bos_token_id=1025, rope_embeddings=False,
                   scale_embedding=False, use_fused_lm_heads=False, codebook_weights=None,
                   cross_attention_implementation_strategy=None, tie_word_embeddings=False,
                   dropout=0.1, attention_dropout=0.0, activation_dropout=0.0)  # fmt: skip
    return {
        "model_type": "parler_tts",
        "architectures": ["ParlerTTSForConditionalGeneration"],
        "is_encoder_decoder": True,
        "vocab_size": vocab_size,
        "prompt_cross_attention": False,
        "pad_token_id": 1024,
        "decoder_start_token_id": 1025,
        "text_encoder": t5,
        "audio_encoder": dac,
        "decoder": decoder,
        "codectts_random_init": True,
    }


def make_tiny_random_model(out: str | Path, seed: int = 0, num_codebooks: int = 4) -> Path:
    """Write the folder (see the module docstring); returns its path."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab_size = build_tokenizer(tmp)
    (tmp / "config.json").write_text(json.dumps(hf_config(vocab_size, num_codebooks), indent=2))
    generation = {"bos_token_id": 1025, "decoder_start_token_id": 1025, "eos_token_id": 1024,
                  "pad_token_id": 1024, "max_length": 2580, "do_sample": True}  # fmt: skip
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ParlerTTS(read_config(tmp))
    finally:
        torch.random.set_rng_state(state)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights.pop("text_encoder.encoder.embed_tokens.weight")  # tied to text_encoder.shared
    codec = DacCodec.random_init(num_codebooks=num_codebooks, seed=seed)
    weights.update({PACKAGE_PREFIX + k: v for k, v in package_state_from_dac(codec.model).items()})
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "README.txt").write_text(README.format(seed=seed))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random weight")
    parser.add_argument("--num_codebooks", type=int, default=4, help="DAC codebooks modelled")
    args = parser.parse_args()
    folder = make_tiny_random_model(args.out, args.seed, args.num_codebooks)
    print(f"RANDOM-INIT Parler-TTS folder written: {folder} (meaningless audio; tests/demo only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
