"""utils/checkpoint.py: atomic folders, tied weights in safetensors, pruning, discovery, safety."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import utils.checkpoint as ckpt_module
from models.tts.valle.valle import VALLE
from utils.checkpoint import (
    CheckpointError,
    atomic_directory,
    checkpoint_name,
    checkpoint_order,
    config_differences,
    list_checkpoints,
    load_tensor_file,
    load_training_state,
    prune_checkpoints,
    read_best,
    read_meta,
    remove_incomplete,
    resolve_checkpoint,
    save_checkpoint,
    write_best,
)
from utils.config import ModelConfig


def tiny_model() -> VALLE:
    torch.manual_seed(0)
    return VALLE(ModelConfig(decoder_dim=16, nhead=2, num_decoder_layers=1, text_token_num=8))


def save(exp, step, loss=1.0, valid=None, state=None):
    weights = {"w": torch.full((2,), float(step))}
    meta = {"step": step, "valid_loss": valid, "model": {"decoder_dim": 16}}
    return save_checkpoint(exp, checkpoint_name(0, step, loss), weights, meta, state)


def test_tied_weights_saved_once_and_reload_tied(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path, "epoch-0000_step-0000001_loss-1.000000", model, {}, None)
    loaded = load_file(str(path / "model.safetensors"))  # would fail on shared tensors
    # 6 tied pairs (nar_predict_layers.j <-> nar_audio_embeddings.j+2) are stored once each
    assert len(loaded) == len(model.state_dict()) - 6
    other = VALLE(ModelConfig(decoder_dim=16, nhead=2, num_decoder_layers=1, text_token_num=8))
    other.load_amphion_state_dict(loaded)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
    assert (
        other.nar_predict_layers[0].weight is other.nar_audio_embeddings[2].word_embeddings.weight
    )
    assert json.loads((path / "meta.json").read_text())["format"] == "codectts-valle-1"


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    final = tmp_path / "checkpoint" / "epoch-0000_step-0000001_loss-1.000000"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert list((tmp_path / "checkpoint").iterdir()) == []


def test_incomplete_write_is_ignored_and_cleaned(tmp_path):
    good = save(tmp_path, 1)
    stale = tmp_path / "checkpoint" / ".tmp-epoch-0000_step-0000002_loss-1.000000-abcd1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert list_checkpoints(tmp_path) == [good]
    assert resolve_checkpoint(tmp_path).folder == good
    assert remove_incomplete(tmp_path) == [stale] and not stale.exists()


def test_prune_keeps_last_n_and_best(tmp_path):
    paths = [save(tmp_path, s) for s in (1, 2, 3, 4, 5)]
    write_best(tmp_path, paths[1].name)
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(deleted) == sorted([paths[0], paths[2]])
    assert list_checkpoints(tmp_path) == [paths[1], paths[3], paths[4]]
    assert read_best(tmp_path) == paths[1]


def test_list_orders_by_step_not_name(tmp_path):
    late = save_checkpoint(tmp_path, checkpoint_name(0, 10, 1.0), {"w": torch.ones(1)}, {}, None)
    early = save_checkpoint(tmp_path, checkpoint_name(3, 9, 1.0), {"w": torch.ones(1)}, {}, None)
    assert list_checkpoints(tmp_path) == [early, late]


def test_training_state_is_weights_only_and_pickles_refused(tmp_path):
    state = {"step": 3, "rng": [torch.get_rng_state()], "python": (3, (1, 2), None)}
    path = save(tmp_path, 3, state=state)
    loaded = load_training_state(path)
    assert loaded["step"] == 3 and torch.equal(loaded["rng"][0], state["rng"][0])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_tensor_file(bad)
    weights_only = tmp_path / "weights_only"
    save_checkpoint(tmp_path, "x", {"w": torch.ones(1)}, {}, None).rename(weights_only)
    with pytest.raises(CheckpointError, match="finetune"):
        load_training_state(weights_only)


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torch-legacy"])
def test_truncated_files_are_named_incomplete_not_unsafe(tmp_path, fmt):
    state = {"a": torch.randn(64, 64), "b": torch.arange(10)}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.bin")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "torch")
    data = path.read_bytes()
    for size in (0, 5, 100, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as caught:
            load_tensor_file(path)
        message = str(caught.value)
        assert f"{path} is incomplete or corrupt" in message, (size, message)
        assert "pick another checkpoint" in message and "pickled code" not in message


def test_truncated_training_state_is_named_incomplete(tmp_path):
    ckpt = save(tmp_path, 4, state={"step": 4, "rng": [torch.get_rng_state()]})
    path = ckpt / "training_state.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="training_state.pt is incomplete or corrupt"):
        load_training_state(ckpt)


def test_checkpoint_order_is_by_step_in_the_name():
    names = ["epoch-0002_step-0000900_loss-1.0", "final", "epoch-0010_step-0000100_loss-2.5"]
    ordered = sorted((Path(n) for n in names), key=checkpoint_order)
    assert [p.name for p in ordered] == [names[1], names[2], names[0]]


def test_resolve_amphion_release_and_its_model_config(tmp_path):
    release = tmp_path / "valle_libritts"
    ckpt = release / "checkpoint" / "epoch-0016_step-0060000_loss-3.000000"
    ckpt.mkdir(parents=True)
    torch.save(tiny_model().state_dict(), ckpt / "pytorch_model.bin")
    (release / "args.json").write_text(json.dumps({"model": {"decoder_dim": 16, "nhead": 2}}))
    assert resolve_checkpoint(release).folder == ckpt
    assert resolve_checkpoint(ckpt).folder == ckpt
    found = resolve_checkpoint(ckpt)
    model_cfg, source = found.model, found.model_file
    assert model_cfg == {"decoder_dim": 16, "nhead": 2} and source == release / "args.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resolve_checkpoint(tmp_path / "empty")


def test_config_differences_lists_each_changed_key():
    diffs = config_differences(
        {"decoder_dim": 32, "nhead": 2, "nar_scale_factor": 1},
        {"decoder_dim": 64, "nhead": 2, "nar_scale_factor": 1.0},
    )
    assert diffs == ["model.decoder_dim: 32 (checkpoint) -> 64 (config)"]


class Killed(BaseException):
    """Stands for a kill: raised at one step of a checkpoint replace, no cleanup runs after."""


def _kill_at_step(monkeypatch, k: int) -> list[int]:
    """Make the k-th file-system step of a commit (fsync, rename, exchange, delete) 'kill' the
    process: os.replace / os.fsync / the exchange raise Killed before acting, shutil.rmtree
    deletes one file and then raises (a kill in the middle of a delete). Returns the counter."""
    count = [0]

    def step(fn, partial: bool = False):
        def run(*args, **kwargs):
            count[0] += 1
            if count[0] - 1 != k:
                return fn(*args, **kwargs)
            files = sorted(p for p in Path(args[0]).rglob("*") if p.is_file()) if partial else []
            if files:
                files[0].unlink()
            raise Killed

        return run

    monkeypatch.setattr(os, "replace", step(os.replace))
    monkeypatch.setattr(os, "fsync", step(os.fsync))
    monkeypatch.setattr(shutil, "rmtree", step(shutil.rmtree, partial=True))
    monkeypatch.setattr(ckpt_module, "_exchange", step(ckpt_module._exchange), raising=False)
    return count


def _complete(folder: Path) -> float:
    """The step a complete checkpoint folder was saved with (every file present and whole)."""
    assert read_meta(folder)["step"] == load_training_state(folder)["step"]
    return float(load_tensor_file(folder / "model.safetensors")["w"][0])


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_kill_at_any_step_of_a_replace_leaves_a_complete_checkpoint(
    tmp_path, monkeypatch, exchange
):
    name = checkpoint_name(0, 7, 1.0)
    if not exchange:  # the portable path: final -> .old-, tmp -> final
        monkeypatch.setattr(ckpt_module, "_exchange", lambda a, b: False, raising=False)

    def attempt(exp: Path, k: int) -> int:
        """Save step 1 under `name`, then replace it by step 2 with a kill at step k."""
        weights = {"w": torch.ones(4)}
        save_checkpoint(exp, name, weights, {"step": 1}, {"step": 1})
        with monkeypatch.context() as m:
            count = _kill_at_step(m, k)
            try:
                save_checkpoint(exp, name, {"w": 2 * torch.ones(4)}, {"step": 2}, {"step": 2})
            except Killed:
                pass
        return count[0]

    steps = attempt(tmp_path / "dry", k=10**6)  # no kill: count the steps
    assert steps >= 5
    saw_window = False
    for k in range(steps + 1):
        exp = tmp_path / f"kill{k}"
        attempt(exp, k)
        root = exp / "checkpoint"
        if not (root / name).exists():  # between two renames: the old copy must be whole
            saw_window = True
            (old,) = root.glob(f".old-{name}-*")
            assert _complete(old) == 1.0
        remove_incomplete(exp)  # what the trainer runs at start
        assert sorted(p.name for p in root.iterdir()) == [name], k
        saved = _complete(root / name)  # the old or the new checkpoint, whole
        assert saved == 2.0 if k >= steps else saved in (1.0, 2.0), k
        assert list_checkpoints(exp) == [root / name]
    assert saw_window == (not exchange)


def test_atomic_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", record)
    write_best(tmp_path, "x")
    assert any(Path(p).name.endswith("-best") for p in synced)  # the temporary file's data
    assert str(tmp_path.resolve()) in synced  # the rename
    synced.clear()
    folder = save(tmp_path, 3, state={"step": 3})
    for child in folder.iterdir():
        assert any(Path(p).name == child.name for p in synced), child.name
    assert str(folder.parent.resolve()) in synced


def test_training_and_stage3_resolve_paths_by_the_same_rules(tmp_path):
    """Finetune (the engine's pick_checkpoints) and stage 3 (find_model_source) go through
    resolve_checkpoint: the same path gives the same checkpoint, or the same refusal."""
    from models.base.train_state import pick_checkpoints
    from models.tts.valle import trainer
    from models.tts.valle.inference import InferenceError, find_model_source
    from utils.config import REPO_ROOT, config_to_dict, load_config

    recipe = load_config(REPO_ROOT / "config" / "valle.json")
    model_cfg = dataclasses.replace(recipe.model, decoder_dim=16, nhead=2, num_decoder_layers=1)
    release = tmp_path / "valle_libritts"
    ckpt = release / "checkpoint" / "epoch-0016_step-0060000_loss-3.000000"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    weights = VALLE(model_cfg).state_dict()
    torch.save(weights, ckpt / "pytorch_model.bin")
    torch.save(weights, release / "pytorch_model.bin")  # a stray copy at the top: not newer
    (release / "args.json").write_text(json.dumps({"model": config_to_dict(model_cfg)}))
    (release / "symbols.dict").write_text("<eps> 0\na 1\n")
    bare = tmp_path / "bare"  # weights, but nothing says which model they are for
    bare.mkdir()
    torch.save(weights, bare / "pytorch_model.bin")

    def finetune_from(path: Path) -> Path:
        argv = ["--config", "c.json", "--exp_name", "ft", "--resume", "true",
                "--resume_type", "finetune", "--resume_from_ckpt_path", str(path)]  # fmt: skip
        args = trainer.parse_args(argv)
        return pick_checkpoints(args, tmp_path / "exp" / "ft", recipe=None)[1]  # no init source

    for path in (release, release / "checkpoint", ckpt):
        assert finetune_from(path) == ckpt, path
        assert find_model_source(path, "latest", recipe).weights == ckpt / "pytorch_model.bin"
    with pytest.raises(CheckpointError, match="no checkpoint in .*bare: it is neither an exp"):
        finetune_from(bare)
    with pytest.raises(InferenceError, match="no checkpoint in .*bare: it is neither an exp"):
        find_model_source(bare, "latest", recipe)
