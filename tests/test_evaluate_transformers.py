"""Stage 4's transformers backends (Whisper, HuBERT CTC, WavLM speaker verification).

No weights can be downloaded here, so these tests use TINY RANDOM-INIT models built from
transformers config classes and saved to a local folder, with a tokenizer / feature extractor
constructed in the test: their transcripts and similarities are meaningless; what is checked is
the loading from a local folder, batching, decoding and the error message when a model cannot be
found. The real models are openai/whisper-large-v3, facebook/hubert-large-ls960-ft and
microsoft/wavlm-base-plus-sv (README, stage 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bins.tts import evaluate as cli
from evaluation.backends import BackendError, load_backend
from utils.config import REPO_ROOT

LETTERS = list("abcdefghijklmnopqrstuvwxyz'")
CONV = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8),
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}  # fmt: skip
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, **CONV}  # fmt: skip


def tiny_whisper(folder: Path) -> Path:
    """A random-init 1-layer Whisper + a byte-level BPE tokenizer of single letters."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    vocab = {t: i for i, t in enumerate(["Ġ"] + LETTERS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                           unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                           eos_token="<|endoftext|>", pad_token="<|endoftext|>")  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    eot, sot = tok.convert_tokens_to_ids(specials[:2])
    cfg = WhisperConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_target_positions=16, decoder_start_token_id=sot,
                        eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config.max_new_tokens = 6
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(), tok).save_pretrained(folder)
    return folder


def ctc_vocab(folder: Path) -> Path:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|"] + LETTERS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder / "vocab.json"


def tiny_hubert(folder: Path) -> Path:
    from transformers import (
        HubertConfig,
        HubertForCTC,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True)
    tok = Wav2Vec2CTCTokenizer(str(ctc_vocab(folder)))
    torch.manual_seed(0)
    # layer norm + attention mask, as hubert-large-ls960-ft (padding must not change results)
    cfg = HubertConfig(vocab_size=len(tok), feat_extract_norm="layer", do_stable_layer_norm=True,
                       **TINY)  # fmt: skip
    HubertForCTC(cfg).save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(extractor, tok).save_pretrained(folder)
    return folder


def tiny_wavlm(folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    xvector = {"tdnn_dim": (16, 16), "tdnn_kernel": (3, 1), "tdnn_dilation": (1, 1)}
    cfg = WavLMConfig(xvector_output_dim=8, num_buckets=16, max_bucket_distance=32, **xvector,
                      **TINY)  # fmt: skip
    WavLMForXVector(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny_random_init_models")
    return {"whisper": tiny_whisper(base / "whisper"), "hubert": tiny_hubert(base / "hubert"),
            "wavlm": tiny_wavlm(base / "wavlm")}  # fmt: skip


def waves(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(8000 + 4000 * i)).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("name", ["whisper", "hubert"])
def test_asr_backend_from_a_local_folder(tiny_models, name):
    asr = load_backend("asr", name, str(tiny_models[name]))
    assert asr.name == name and str(tiny_models[name]) in asr.version
    texts = asr.transcribe(waves())
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert asr.transcribe(waves()[1:2]) == texts[1:2]  # padding in a batch changes nothing


def test_wavlm_embeddings_are_unit_vectors_per_utterance(tiny_models):
    sim = load_backend("sim", "wavlm", str(tiny_models["wavlm"]))
    emb = sim.embed(waves())
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sim.embed(waves()[2:]), emb[2:], rtol=1e-4, atol=1e-5)


def test_stage4_with_the_transformers_backends(tiny_models, tmp_path):
    sr = 16000
    for i, wav in enumerate(waves(2)):
        sf.write(tmp_path / f"{i}.wav", wav, sr)
    lines = [{"name": f"u{i}", "text": "hello world", "text_prompt": "p",
              "audio_prompt": str(tmp_path / "0.wav"), "output": str(tmp_path / f"{i}.wav")}
             for i in range(2)]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["--config", str(REPO_ROOT / "config" / "valle.json"), "--input_dir", str(tmp_path)]
    args += ["--asr", "whisper", "--asr_model", str(tiny_models["whisper"]), "--sim", "wavlm"]
    args += ["--sim_model", str(tiny_models["wavlm"]), "--mos", "none", "--progress", "false"]
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["wer"] is not None
    metrics = [
        json.loads(x) for x in (tmp_path / "eval" / "metrics.jsonl").read_text().split("\n")[:-1]
    ]
    assert metrics[0]["sim_o"] == pytest.approx(1.0, abs=1e-4)  # u0's output is its prompt
    assert -1.0 <= metrics[1]["sim_o"] < 1.0 - 1e-4
    assert str(tiny_models["whisper"]) in summary["backends"]["asr"]


def test_a_model_that_cannot_be_loaded_names_where_and_the_offline_backend(tmp_path):
    with pytest.raises(BackendError) as e:
        load_backend("sim", "wavlm", str(tmp_path))  # an existing folder without the model
    assert f"the local folder {tmp_path}" in str(e.value) and "--eval_sim resemblyzer" in str(
        e.value
    )
    (tmp_path / "results.jsonl").write_text("")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bins" / "tts" / "evaluate.py"), "--config",
         str(REPO_ROOT / "config" / "valle.json"), "--input_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot load the whisper model 'openai/whisper-large-v3'" in proc.stderr
    assert "Hugging Face hub and the local cache" in proc.stderr
    assert "--eval_asr pocketsphinx" in proc.stderr and "Traceback" not in proc.stderr
