"""It learns: the real training loop makes a tiny VALL-E overfit 4 utterances (AR decoder).

Checks on the trained checkpoint, not on the training log: teacher-forced top-1 accuracy of the
AR decoder >= 0.9 and greedy AR decoding (`VALLE.generate`, top_k 1) from each utterance's first
frame reproduces its stream-0 codes and stops with EOS.
"""

from __future__ import annotations

import torch
from train_fixtures import make_stage1, write_config

from models.tts.valle import trainer
from models.tts.valle.dataset import VALLEDataset
from models.tts.valle.valle import VALLE
from text.symbol_table import TextTokenizer
from utils.checkpoint import list_checkpoints, load_weights
from utils.config import load_config
from utils.cut_shards import read_cuts


def test_tiny_model_overfits_four_utterances(tmp_path):
    torch.set_num_threads(1)
    processed = make_stage1(tmp_path / "data", n_train=4, n_valid=1, seed=5, frames=(16, 24))
    cfg_path = write_config(
        tmp_path / "c.json", processed, tmp_path / "exp",
        model={"decoder_dim": 64, "nhead": 4, "num_decoder_layers": 2, "dropout": 0.0},
        train={"batch_size": 4, "max_steps": 120, "base_lr": 3e-3, "warmup_steps": 10,
               "scheduler": "constant", "weight_decay": 0.0, "log_interval": 20},
    )  # fmt: skip
    assert trainer.main(["--config", str(cfg_path), "--exp_name", "learn"]) == 0

    cfg = load_config(cfg_path)
    model = VALLE(cfg.model).eval()
    model.load_amphion_state_dict(load_weights(list_checkpoints(tmp_path / "exp" / "learn")[-1]))
    cuts = read_cuts(processed / "libritts", "train")
    batch = VALLEDataset(TextTokenizer.from_file(processed / "symbols.dict"))[cuts]
    x, x_lens, y, y_lens = batch["x"], batch["x_lens"], batch["y"], batch["y_lens"]

    # teacher forcing: logits of the AR output layer for every frame
    captured = {}
    hook = model.ar_predict_layer.register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        model(x, x_lens, y, y_lens, train_stage=1)
    hook.remove()
    predicted = captured["out"].argmax(-1)  # (B, T, V + 1)
    hits = total = 0
    for b in range(len(cuts)):
        t = int(y_lens[b])
        target = torch.cat([y[b, 1:t, 0], torch.tensor([model.eos_id])])  # next frame, then EOS
        hits += int((predicted[b, :t] == target).sum())
        total += t
    assert hits / total >= 0.9, f"teacher-forced top-1 accuracy {hits / total:.3f}"

    # free-running greedy decoding from the first frame of each utterance
    result = model.generate(x, x_lens, y[:, :1], torch.ones(len(cuts), dtype=torch.long), top_k=1)
    for b in range(len(cuts)):
        t = int(y_lens[b])
        assert result.stop_reasons[b] == "eos", b
        assert torch.equal(result.codes[b][:, 0], y[b, 1:t, 0]), b
