"""Stage 3 with a released Amphion VALL-E folder, built here from the Amphion oracle fixture.

The release layout is `args.json` (Amphion's full json5 config), `symbols.dict` and
`checkpoint/<name>/pytorch_model.bin` or `model.safetensors`; the fixture's `state_dict.pt` came
from Amphion's own VALLE, and `greedy_codes` from Amphion's own `inference`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bins.tts import inference as cli
from models.tts.valle.inference import InferenceError, find_model_source, load_model
from utils.checkpoint import CheckpointError
from utils.config import REPO_ROOT, load_config

FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "amphion_valle_tiny"
CKPT_NAME = "epoch-0077_step-0433000_loss-1.853398"

pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"{FIXTURE} not available")


def fixture_model_section() -> dict:
    return json.loads((FIXTURE / "config.json").read_text())["model"]


def make_release(root: Path, weights_format: str) -> Path:
    """A folder laid out like amphion/valle_libritts, holding the fixture's weights."""
    state = torch.load(FIXTURE / "state_dict.pt", map_location="cpu", weights_only=True)
    ckpt = root / "checkpoint" / CKPT_NAME
    ckpt.mkdir(parents=True)
    if weights_format == "bin":
        torch.save(state, ckpt / "pytorch_model.bin")
    else:
        # safetensors cannot hold a tied tensor twice: keep ONE name of each pair, alternating
        # which one, so both directions of the loader's re-tying are exercised.
        unique = dict(state)
        for j in range(6):
            out_name = f"nar_predict_layers.{j}.weight"
            in_name = f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"
            del unique[out_name if j % 2 else in_name]
        save_file(
            {k: v.contiguous().clone() for k, v in unique.items()}, ckpt / "model.safetensors"
        )
    # The training leftovers of a real release must be ignored.
    (ckpt / "optimizer.bin").write_bytes(b"not needed")
    args = (
        "// Amphion args.json (json5)\n"
        "{\n"
        '  "base_config": "config/valle.json",\n'
        '  "model_type": "VALLE",\n'
        '  "supported_model_type": ["GANVocoder", "Fastspeech2", "VALLE"],\n'
        '  "dataset": ["libritts"],\n'
        '  "preprocess": {"phone_extractor": "espeak", "processed_dir": "/mnt/data/processed",'
        ' "use_mel": false, "sample_rate": 24000},\n'
        f'  "model": {json.dumps(fixture_model_section())},\n'
        '  "train": {"batch_size": 4, "max_epoch": 100, "adamw": {"lr": 1e-4}},\n'
        '  "log_dir": "ckpts/tts",\n'
        "}\n"
    )
    (root / "args.json").write_text(args)
    phones = ["_", ",", ".", "a", "b", "d", "e", "h", "i", "l", "n", "o", "s", "t"]
    (root / "symbols.dict").write_text(
        "<eps> 0\n" + "".join(f"{p} {i}\n" for i, p in enumerate(phones, 1))
    )
    return root


@pytest.mark.parametrize("weights_format", ["bin", "safetensors"])
def test_release_folder_reproduces_amphion_greedy_codes(tmp_path, weights_format, caplog):
    torch.set_num_threads(1)
    release = make_release(tmp_path / "valle_libritts", weights_format)
    recipe_cfg = load_config(REPO_ROOT / "config" / "valle.json")
    with caplog.at_level(logging.INFO, logger="models.tts.valle.inference"):
        source = find_model_source(release, "latest", recipe_cfg)
    ignored = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 1, [r.getMessage() for r in caplog.records]
    assert "train" in ignored[0].getMessage() and "preprocess" in ignored[0].getMessage()
    assert source.kind == "release"
    expected_name = "pytorch_model.bin" if weights_format == "bin" else "model.safetensors"
    assert source.weights == release / "checkpoint" / CKPT_NAME / expected_name
    assert source.symbols == release / "symbols.dict"
    assert source.cfg.model.decoder_dim == 32 and source.cfg.model.prefix_mode == 1
    # Decoding settings stay the recipe's, not the release's.
    assert source.cfg.inference == recipe_cfg.inference
    # The release's checkpoint folder itself works too.
    direct = find_model_source(release / "checkpoint" / CKPT_NAME, "latest", recipe_cfg)
    assert (direct.kind, direct.root, direct.weights) == ("release", release, source.weights)

    model = load_model(source, "cpu")
    inputs = torch.load(FIXTURE / "inputs.pt", weights_only=True)
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    codes = model.inference(
        inputs["x1"], inputs["x1_lens"], inputs["y1"], inputs["enroll_x_lens"], top_k=1
    )
    assert torch.equal(codes, expected["greedy_codes"])
    # Re-tied after loading: one tensor under both names.
    assert (
        model.nar_predict_layers[0].weight is model.nar_audio_embeddings[2].word_embeddings.weight
    )


class _RunsCode:
    """Unpickling this calls os.system: exactly what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    release = make_release(tmp_path / "evil_release", "bin")
    weights = release / "checkpoint" / CKPT_NAME / "pytorch_model.bin"
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": _RunsCode(marker)}, weights)
    source = find_model_source(release, "latest", load_config(REPO_ROOT / "config" / "valle.json"))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(source, "cpu")
    assert not marker.exists()

    # The command line reports it and fails without a traceback.
    prompt = tmp_path / "p.wav"
    prompt.write_bytes(b"RIFF")  # never read: loading the model fails first
    rc = cli.main(
        [
            "--config",
            str(REPO_ROOT / "config" / "valle.json"),
            "--expt_dir",
            str(release),
            "--mode",
            "single",
            "--text",
            "hello",
            "--text_prompt",
            "hi",
            "--audio_prompt",
            str(prompt),
            "--progress",
            "false",
        ]
    )
    assert rc == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_release_without_weights_or_model_section_is_explained(tmp_path):
    cfg = load_config(REPO_ROOT / "config" / "valle.json")
    release = make_release(tmp_path / "r", "bin")
    (release / "checkpoint" / CKPT_NAME / "pytorch_model.bin").unlink()
    with pytest.raises(InferenceError, match="no checkpoint/<name>/pytorch_model.bin"):
        find_model_source(release, "latest", cfg)
    (release / "args.json").write_text('{"train": {}}')
    with pytest.raises(InferenceError, match="no 'model' section"):
        find_model_source(release, "latest", cfg)


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    release = make_release(tmp_path / "r", "safetensors")
    args = (
        (release / "args.json")
        .read_text()
        .replace('"num_decoder_layers": 2', '"num_decoder_layers": 3')
    )
    (release / "args.json").write_text(args)
    source = find_model_source(release, "latest", load_config(REPO_ROOT / "config" / "valle.json"))
    with pytest.raises(InferenceError, match="model.safetensors: the weights do not fit"):
        load_model(source, "cpu")


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_truncated_weights_are_reported_as_incomplete_by_stage_3(tmp_path, capsys, kind):
    release = make_release(tmp_path / "cut_release", kind)
    name = "model.safetensors" if kind == "safetensors" else "pytorch_model.bin"
    weights = release / "checkpoint" / CKPT_NAME / name
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted download
    prompt = tmp_path / "p.wav"
    prompt.write_bytes(b"RIFF")  # never read: loading the model fails first
    rc = cli.main(
        ["--config", str(REPO_ROOT / "config" / "valle.json"), "--expt_dir", str(release),
         "--mode", "single", "--text", "hello", "--text_prompt", "hi",
         "--audio_prompt", str(prompt), "--progress", "false"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{weights} is incomplete or corrupt" in err
    assert "Download or copy it again, or pick another checkpoint" in err
    assert "pickled code" not in err and "Traceback" not in err
