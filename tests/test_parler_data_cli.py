"""bins/tts/parler_preprocess.py: bad inputs end with one clear message (exit 1), no traceback."""

from __future__ import annotations

import json

import huggingface_hub
import pytest

from bins.tts.parler_preprocess import main


def config(tmp_path, **top) -> str:
    (tmp_path / "list.txt").write_text("a.wav|text|a description\n")
    cfg = {"dataset": ["custom"], "dataset_path": {"custom": str(tmp_path / "list.txt")},
           "preprocess": {"processed_dir": str(tmp_path / "out")}}  # fmt: skip
    cfg.update(top)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return str(tmp_path / "cfg.json")


def test_offline_hub_id_says_what_to_place_where(tmp_path, monkeypatch, capsys):
    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["--config", config(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert " ERROR parler_preprocess: Parler-TTS model: " in err and "Traceback" not in err
    assert "huggingface-cli download parler-tts/parler-tts-mini-v1" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"preprocess": {"shard_sise": 2}}, "unknown key 'preprocess.shard_sise'"),
        ({"dataset_path": {"custom": "/nonexistent/list.txt"}}, "no such custom corpus list file"),
        ({"model": {"pretrained": "/nonexistent/folder"}}, "/nonexistent/folder is not a folder"),
    ],
)
def test_bad_config_or_paths(tmp_path, capsys, change, message):
    assert main(["--config", config(tmp_path, **change)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert main(["--config", config(tmp_path), "--num_workers", "0"]) == 1
    assert "--num_workers must be >= 1" in capsys.readouterr().err
