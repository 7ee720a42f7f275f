"""The TokTTS recipe config (utils/toktts_config.py) and the stage-1 clip / augmentation rules
(preprocessors/toktts_data.py): what a user gets wrong is named, the perturbation is the
documented one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from preprocessors.toktts_data import Copy, clip_audio, make_copies
from utils.config import REPO_ROOT
from utils.config_loader import ConfigError
from utils.toktts_config import TokTTSPreprocessConfig, load_toktts_config

BASE = str(REPO_ROOT / "egs" / "tts" / "TokTTS" / "exp_config.json")


def config(tmp_path, **tree):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base_config": BASE, **tree}))
    return path


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"train": {"train_stage": 1}}, "key 'train.train_stage' is not a TokTTS key"),
        ({"inference": {"continual": True}}, "key 'inference.continual' is not a TokTTS key"),
        ({"preprocess": {"phone_language": "en"}}, "unknown key 'preprocess.phone_language'"),
        ({"model": {"dim": "64"}}, "key 'model.dim': expected integer"),
        ({"preprocess": {"codec_bandwidth": 6.0}}, "gives 8 codebooks, model.num_codebooks is 2"),
        ({"dataset": ["libritts"]}, "unknown corpus 'libritts'"),
    ],
)
def test_bad_keys_are_refused_naming_key_and_file(tmp_path, tree, message):
    path = config(tmp_path, **tree)
    with pytest.raises(ConfigError, match=message) as err:
        load_toktts_config(path)
    assert str(path) in str(err.value)


def test_shipped_configs_load_and_train_the_whole_model():
    for name in ("exp_config", "exp_config_2s_augmented", "exp_config_demo"):
        cfg = load_toktts_config(REPO_ROOT / "egs" / "tts" / "TokTTS" / f"{name}.json")
        assert cfg.train.train_stage == 0 and cfg.preprocess.codec_bandwidth == 1.5
    assert cfg.preprocess.augmentation_factor == 2  # the demo
    with pytest.raises(ConfigError, match="--train_stage 1"):
        load_toktts_config(BASE, {"train": {"train_stage": 1}})


def test_copies_are_seeded_per_utterance_and_copy_zero_is_the_original():
    pcfg = TokTTSPreprocessConfig(augmentation_factor=4)
    cut = SimpleNamespace(id="LJ001-0001")
    copies = make_copies(cut, 4, pcfg)
    assert [(c.id, c.speed, c.gain_db) for c in copies[:1]] == [("LJ001-0001", 1.0, 0.0)]
    assert [c.id for c in copies[1:]] == [f"LJ001-0001_aug{k}" for k in (1, 2, 3)]
    assert [(c.speed, c.gain_db) for c in make_copies(cut, 4, pcfg)] == [
        (c.speed, c.gain_db) for c in copies
    ]  # deterministic
    for c in copies[1:]:
        assert 0.9 <= c.speed <= 1.1 and -6.0 <= c.gain_db <= 3.0
        assert round(c.speed * 24000) % 200 == 0  # the resampler-friendly grid


def test_clip_is_the_first_frames_faded_only_where_the_cap_cuts():
    wav = torch.full((24000,), 0.5)
    original = Copy(SimpleNamespace(id="u"), 0, 1.0, 0.0)
    hard = clip_audio(wav, original, 10, 0.0)
    assert torch.equal(hard, wav[:3200])
    faded = clip_audio(wav, original, 10, 0.01)  # 240 samples
    assert torch.equal(faded[:-240], wav[: 3200 - 240]) and faded[-1] == 0.0
    short = clip_audio(wav[:1000], original, 10, 0.01)  # ends before the cap: not faded
    assert torch.equal(short, wav[:1000])
    louder = clip_audio(wav, Copy(SimpleNamespace(id="u"), 1, 1.0, 6.0), 10, 0.0)
    assert torch.allclose(louder, torch.full((3200,), 0.5 * 10 ** (6 / 20)))
    faster = clip_audio(
        torch.randn(24000) * 0.1, Copy(SimpleNamespace(id="u"), 1, 1.25, 0.0), 10, 0
    )
    assert faster.shape == (3200,)
