"""Parler-TTS recipe stage 2 (training on the engine) against the package's semantics: batches and
loss as the fixture's, exact resume, finetune loading every parameter, export to the released
layout. A tiny world (tests/parler_world.py): the fixture's model + a stage-1 output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from lhotse import CutSet
from parler_fixture import FIXTURE, load_fixture, rel_err
from parler_world import HOP, REPO, make_model_folder, make_stage1, write_config
from safetensors.torch import load_file

from bins.tts import parler_export
from models.base.train_data import DataError
from models.base.train_state import TrainingError
from models.codec.dac import DacCodec
from models.tts.parler import trainer as parler_trainer
from models.tts.parler.dataset import ParlerDataset, check_cut
from models.tts.parler.pretrained import load_pretrained, read_config
from utils.checkpoint import list_checkpoints, load_training_state, load_weights
from utils.config_parler import load_parler_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("parler")
    model = make_model_folder(root / "model")
    return root, model, make_stage1(root / "data", model)


def train(cfg, name: str, *extra: str) -> int:
    return parler_trainer.main(["--config", str(cfg), "--exp_name", name, *extra])


def fixture_cuts(tmp_path, inp):
    """The fixture's two items as stage-1 cuts (valid ids only, codes time-major)."""
    from lhotse import CutSet, MonoCut
    from lhotse.features.io import NumpyFilesWriter

    cuts = []
    with NumpyFilesWriter(str(tmp_path / "codes")) as writer:
        for b in range(2):
            T = int(inp["code_lens"][b])
            cut = MonoCut(id=f"fx{b}", start=0.0, duration=T * HOP, channel=0)
            desc = inp["input_ids"][b][inp["attention_mask"][b].bool()].tolist()
            prompt = inp["prompt_input_ids"][b][inp["prompt_attention_mask"][b].bool()].tolist()
            cut.custom = {"description_ids": desc, "prompt_ids": prompt}
            codes = inp["codes"][b, :, :T].t().numpy().astype(np.int16)
            cut.codes = writer.store_array(cut.id, codes, frame_shift=HOP, temporal_dim=0)
            cuts.append(cut)
    return CutSet.from_cuts(cuts)


def test_batches_and_loss_are_the_packages(tmp_path, world):
    """The collated labels and masks are the package's training batch (fixture inputs), and the
    recipe's loss of an item is the package's: per codebook the mean cross-entropy over its codes
    and one EOS (the fixture's loss mask), summed / K, from the package's own logits."""
    inp, exp = load_fixture()
    cuts = fixture_cuts(tmp_path, inp)
    batch = ParlerDataset(4, 1024, 1025, 1024, 0)[cuts]
    assert torch.equal(batch["labels"], inp["labels"])
    assert torch.equal(batch["attention_mask"], inp["attention_mask"])
    assert torch.equal(batch["prompt_attention_mask"], inp["prompt_attention_mask"])  # left pad
    assert batch["y_lens"].tolist() == inp["code_lens"].tolist()
    recipe = parler_trainer.ParlerTrainRecipe(None, None)
    model = load_pretrained(FIXTURE)
    with torch.no_grad():
        loss, metrics = recipe.batch_loss(model, ParlerDataset(4, 1024, 1025, 1024, 0)[cuts[1:]],
                                          torch.Generator(), "cpu")  # fmt: skip
    # item 1 has no prompt padding: the package's batched logits are its single-item ones
    logits, mask, labels = exp["logits"][1], exp["loss_mask"][1], inp["labels"][1]  # (K,T,V)
    per_codebook = [
        torch.nn.functional.cross_entropy(logits[k][mask[:, k]], labels[:, k][mask[:, k]])
        for k in range(4)
    ]
    assert rel_err(loss, sum(per_codebook) / 4) < 1e-5
    assert metrics["audio_frames"] == int(mask.sum()) == 4 * (6 + 1)


def test_finetune_from_released_folder_loads_every_parameter(tmp_path, world):
    """A fresh run starts from model.pretrained: every parameter (package names) is the folder's;
    only the decoder side is trained, T5 stays frozen and unchanged."""
    root, model, data = world
    cfg = load_parler_config(write_config(tmp_path / "c.json", data, model, tmp_path / "exp"))
    recipe = parler_trainer.ParlerTrainRecipe(cfg, None)
    recipe.check_data()
    net, trainable = recipe.build_model(None)
    released = load_file(str(model / "model.safetensors"))
    state = net.state_dict()
    assert set(state) == set(released)
    assert all(torch.equal(state[k], released[k]) for k in state)
    names = {id(p): n for n, p in net.named_parameters()}
    trained = {names[id(p)] for p in trainable}
    assert not any(n.startswith("text_encoder.") for n in trained)
    assert "embed_prompts.weight" in trained and "enc_to_dec_proj.weight" in trained
    assert "decoder.model.decoder.embed_positions.weights" not in trained
    assert train(tmp_path / "c.json", "ft", "--resume", "false") == 0
    after = load_weights(list_checkpoints(tmp_path / "exp" / "ft")[-1])
    assert torch.equal(
        after["text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"],
        released["text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"],
    )
    assert not torch.equal(
        after["decoder.lm_heads.0.weight"], released["decoder.lm_heads.0.weight"]
    )


def test_prompt_embedding_can_stay_frozen(tmp_path, world):
    root, model, data = world
    c = write_config(
        tmp_path / "c.json", data, model, tmp_path / "exp", train_prompt_embedding=False
    )
    recipe = parler_trainer.ParlerTrainRecipe(load_parler_config(c), None)
    recipe.check_data()
    net, trainable = recipe.build_model(None)
    assert all(p is not net.embed_prompts.weight for p in trainable)
    assert any(p is net.decoder["lm_heads"][0].weight for p in trainable)


def test_resume_is_bitwise_exact_and_export_loads(tmp_path, world):
    """3 steps + resume to 6 (mid-epoch: 6 train cuts, batches of 2) == 6 steps in one run, weights
    and logged losses; the export is a released-layout folder load_pretrained reads."""
    root, model, data = world
    whole = write_config(tmp_path / "a.json", data, model, tmp_path / "exp", max_steps=6,
                         save_interval=3)  # fmt: skip
    part = write_config(tmp_path / "b.json", data, model, tmp_path / "exp", max_steps=2)
    assert train(whole, "whole") == 0
    assert train(part, "split") == 0
    frozen = write_config(tmp_path / "f.json", data, model, tmp_path / "exp", max_steps=6,
                          train_prompt_embedding=False)  # fmt: skip
    with pytest.raises(TrainingError, match="train_prompt_embedding = true"):
        train(frozen, "split", "--resume", "true")  # other trainable parameters: refused
    assert train(whole, "split", "--resume", "true") == 0
    a, b = (load_weights(list_checkpoints(tmp_path / "exp" / n)[-1]) for n in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [
        {json.loads(x)["step"]: json.loads(x)["loss"]
         for x in (tmp_path / "exp" / n / "train_log.jsonl").read_text().splitlines()}
        for n in ("whole", "split")
    ]  # fmt: skip
    assert logs[0] == logs[1] and len(logs[0]) == 6
    assert parler_export.main(["--expt_dir", str(tmp_path / "exp" / "whole"), "--output_dir",
                               str(tmp_path / "release")]) == 0  # fmt: skip
    out = tmp_path / "release"
    exported = load_pretrained(out).state_dict()
    assert all(torch.equal(exported[k], a[k]) for k in a)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    codes = torch.randint(0, 1024, (5, 4))  # the folder carries the experiment's DAC too
    inside, stage1 = DacCodec.from_parler_checkpoint(out), DacCodec.load(data / "codec")
    assert torch.allclose(inside.decode([codes])[0], stage1.decode([codes])[0], atol=1e-6)


def test_stage1_of_another_model_is_refused(tmp_path, world):
    root, model, data = world
    other = make_model_folder(tmp_path / "other")
    c = write_config(tmp_path / "c.json", data, other, tmp_path / "exp")
    recipe = parler_trainer.ParlerTrainRecipe(load_parler_config(c), None)
    with pytest.raises(DataError, match="tokenized with"):
        recipe.check_data()
    (data / "stage1.done.json").rename(data / "moved.json")
    try:
        with pytest.raises(DataError, match="stage1.done.json does not exist"):
            parler_trainer.ParlerTrainRecipe(
                load_parler_config(write_config(tmp_path / "d.json", data, model, tmp_path)), None
            ).check_data()
    finally:
        (data / "moved.json").rename(data / "stage1.done.json")


def run_ddp(cfg, name: str, *extra: str):
    """Two CPU processes (gloo) under torch.distributed.run, as accelerate launch would start."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "bins/tts/parler_train.py", "--config", str(cfg), "--exp_name", name,
           *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_and_their_resume_are_exact(tmp_path, world):
    """DDP (frozen T5 parameters, per-rank shards): 2 + resume to 4 steps == 4 steps, bitwise."""
    root, model, data = world
    whole = write_config(tmp_path / "a.json", data, model, tmp_path / "exp", max_steps=4,
                         batch_size=1)  # fmt: skip
    part = write_config(tmp_path / "b.json", data, model, tmp_path / "exp", max_steps=2,
                        batch_size=1)  # fmt: skip
    run_ddp(whole, "whole")
    run_ddp(part, "split")
    run_ddp(whole, "split", "--resume", "true")
    a, b = (load_weights(list_checkpoints(tmp_path / "exp" / n)[-1]) for n in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_training_state(list_checkpoints(tmp_path / "exp" / "split")[-1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_unusable_cuts_are_left_out_naming_why(tmp_path, world, caplog):
    root, model, data = world
    arch = read_config(model)
    cuts = list(CutSet.from_file(data / "custom" / "cuts_train.jsonl.gz"))
    assert all(check_cut(c, arch) is None for c in cuts)
    bad = [cuts[0].with_custom("prompt_ids", [1, 99]),
           cuts[1].with_custom("description_ids", []),
           cuts[2].with_custom("prompt_ids", [5] * 250)]  # fmt: skip
    reasons = [check_cut(c, arch) for c in bad]
    assert "prompt_ids outside [0, 64)" in reasons[0] and "no description_ids" in reasons[1]
    assert "positions > max_position_embeddings 256" in reasons[2]
    # a split with nothing usable left stops training before any model is built
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    CutSet.from_cuts(bad).to_file(broken / "custom" / "cuts_train.jsonl.gz")
    recipe = parler_trainer.ParlerTrainRecipe(
        load_parler_config(write_config(tmp_path / "c.json", broken, model, tmp_path)), None
    )
    recipe.check_data()
    with pytest.raises(DataError, match="no usable train cuts"):
        recipe.load_data("train")
    assert "left out 3 cuts" in caplog.text
