"""bins/tts/download.py: fetch only what inference needs; offline, say how to do it by hand."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import filter_repo_objects

from bins.tts import download

CKPT = "checkpoint/epoch-0077_step-0433000_loss-1.853398"
# What an Amphion VALL-E release holds (inference files + accelerate's training state).
RELEASE_FILES = [
    "README.md",
    ".gitattributes",
    "args.json",
    "symbols.dict",
    f"{CKPT}/pytorch_model.bin",
    f"{CKPT}/optimizer.bin",
    f"{CKPT}/scheduler.bin",
    f"{CKPT}/random_states_0.pkl",
    f"{CKPT}/custom_checkpoint_0.pkl",
    "log/train.log",
]


def fake_snapshot_download(calls: list):
    """Stands in for the Hub: keeps the files the given patterns select, like the real one."""

    def snapshot_download(repo_id, *, local_dir, allow_patterns=None, ignore_patterns=None, **kw):
        calls.append(dict(repo_id=repo_id, allow=allow_patterns, ignore=ignore_patterns, **kw))
        for name in filter_repo_objects(
            RELEASE_FILES, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        ):
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
        return str(local_dir)

    return snapshot_download


def test_download_fetches_only_inference_files(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(calls))
    dest = tmp_path / "valle_libritts"
    assert download.main(["--local_dir", str(dest)]) == 0
    assert calls[0]["repo_id"] == "amphion/valle_libritts"
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == sorted(["README.md", "args.json", "symbols.dict", f"{CKPT}/pytorch_model.bin"])


def test_download_offline_explains_how_to_place_files(tmp_path, monkeypatch, caplog):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError(
            "An error happened while trying to locate the files on the Hub, and we cannot find "
            "the appropriate snapshot folder for the specified revision on the local disk."
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    dest = tmp_path / "valle_libritts"
    with pytest.raises(download.DownloadError) as err:
        download.download("amphion/valle_libritts", dest)
    message = str(err.value)
    assert "not reachable" in message and "by hand" in message
    for needed in ("args.json", "symbols.dict", "pytorch_model.bin"):
        assert f"{dest}/" in message and needed in message
    assert "https://huggingface.co/amphion/valle_libritts" in message
    assert download.main(["--local_dir", str(dest)]) == 1
    assert "place them like this" in caplog.text


def test_download_that_lacks_the_weights_is_reported(tmp_path, monkeypatch):
    def empty(repo_id, *, local_dir, **kwargs):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "args.json").write_text("{}")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", empty)
    with pytest.raises(download.DownloadError, match="lacks symbols.dict, checkpoint/<name>"):
        download.download("someone/other_model", tmp_path / "d")
