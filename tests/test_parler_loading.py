"""Loading released Parler-TTS folders: strict keys, tied T5 embeddings, clear errors for
missing / corrupt / mismatched files and for a hub id without network."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import torch
from parler_fixture import FIXTURE
from safetensors.torch import load_file, save_file

from models.tts.parler.pretrained import ParlerLoadError, load_pretrained

TIED = "text_encoder.encoder.embed_tokens.weight"


@pytest.fixture(scope="module")
def state():
    return load_file(str(FIXTURE / "model.safetensors"))


def folder_with(tmp_path, state: dict) -> str:
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    save_file(state, str(tmp_path / "model.safetensors"))
    return str(tmp_path)


def test_fixture_loads_with_strict_keys_and_every_value(state):
    model = load_pretrained(FIXTURE)
    ours = model.state_dict()
    assert sorted(ours) == sorted(state)  # the package's 68 names, nothing else
    assert all(torch.equal(ours[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_tied_embedding_stored_once_and_dac_keys_ignored(tmp_path, state):
    sd = {k: v for k, v in state.items() if k != TIED}
    sd["audio_encoder.model.quantizer.quantizers.0.codebook.weight"] = torch.zeros(4, 8)
    model = load_pretrained(folder_with(tmp_path, sd))
    assert torch.equal(model.state_dict()[TIED], state[TIED])


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_mismatched_weights_name_the_keys(tmp_path, state, change):
    sd = dict(state)
    key = "decoder.lm_heads.3.weight"
    if change == "missing":
        del sd[key]
    elif change == "unexpected":
        sd["decoder.lm_heads.4.weight"] = sd[key].clone()
    else:
        sd[key] = sd[key][:100]
    with pytest.raises(ParlerLoadError, match=r"lm_heads\.[34]"):
        load_pretrained(folder_with(tmp_path, sd))


def test_truncated_weights_and_missing_files(tmp_path, state):
    folder = folder_with(tmp_path, state)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParlerLoadError, match="model.safetensors is corrupt or incomplete"):
        load_pretrained(folder)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ParlerLoadError, match="model.safetensors not found.*place them in"):
        load_pretrained(folder)
    (tmp_path / "config.json").write_text('{"model_type": "parler_tts",\n  oops}')
    with pytest.raises(ParlerLoadError, match=r"config.json: not valid JSON \(line 2\)"):
        load_pretrained(folder)
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ParlerLoadError, match="config.json: missing key 'decoder'"):
        load_pretrained(folder)


def test_unsupported_config_is_refused(tmp_path, state):
    import json

    folder = folder_with(tmp_path, state)
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg["decoder"]["rope_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ParlerLoadError, match="decoder.rope_embeddings = True is not supported"):
        load_pretrained(folder)


def test_hub_id_offline_says_what_to_place_where(monkeypatch):
    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ParlerLoadError) as e:
        load_pretrained("parler-tts/parler-tts-mini-v1")
    msg = str(e.value)
    assert "huggingface-cli download parler-tts/parler-tts-mini-v1" in msg
    assert "config.json, model.safetensors" in msg and "tokenizer.json" in msg
    with pytest.raises(ParlerLoadError, match="is not a folder"):
        load_pretrained("/no/such/folder")


def test_tokenizer_from_the_folder(tmp_path, state):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from models.tts.parler.pretrained import load_tokenizer

    folder = folder_with(tmp_path, state)
    with pytest.raises(ParlerLoadError, match="tokenizer.json not found"):
        load_tokenizer(folder)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "calm": 4, "voice": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    assert load_tokenizer(folder)("a calm voice").input_ids == [3, 4, 5]


def test_sharded_weights_with_an_index(tmp_path, state):
    import json

    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:30],
              "model-00002-of-00002.safetensors": keys[30:]}  # fmt: skip
    for name, names in shards.items():
        save_file({k: state[k].clone() for k in names}, str(tmp_path / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_pretrained(tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ParlerLoadError, match="model-00002-of-00002.safetensors not found"):
        load_pretrained(tmp_path)
