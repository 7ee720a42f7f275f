"""Training-time listening (models/tts/valle/listening.py): validation utterances synthesised into
tensorboard audio, opt-out with evaluation.listen_utterances = 0, training RNGs untouched."""

from __future__ import annotations

import dataclasses

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from models.codec.encodec import CodecTokenizer
from models.tts.valle import listening
from models.tts.valle.valle import VALLE
from utils.config import REPO_ROOT, load_config


def test_listening_samples_go_to_tensorboard(tmp_path):
    processed = tmp_path / "processed"
    codec = CodecTokenizer.build(pretrained=False, seed=0)
    codec.kmeans_init_([0.1 * torch.randn(24000, generator=torch.Generator().manual_seed(0))])
    codec.save(processed / "codec")
    overrides = {
        "preprocess": {"processed_dir": str(processed), "codec_pretrained": False},
        "model": {"decoder_dim": 16, "nhead": 2, "num_decoder_layers": 1, "text_token_num": 20},
        "evaluation": {"listen_utterances": 1, "listen_max_seconds": 2.0},
    }
    cfg = load_config(REPO_ROOT / "config" / "valle.json", overrides=overrides)
    torch.manual_seed(0)
    model = VALLE(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randint(3, 20, (2, 7), generator=g), "x_lens": torch.tensor([7, 5]),
             "y": torch.randint(0, 1024, (2, 30, 8), generator=g), "y_lens": torch.tensor([30, 20]),
             "cut_ids": ["utt-a", "utt-b"]}  # fmt: skip
    torch.manual_seed(5)
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        assert listening.write_listening_samples(model, batch, cfg, writer, 7, "cpu") == 1
        after = torch.rand(3)
        assert listening.write_listening_samples(model, batch, cfg, writer, 9, "cpu") == 1
        no_listening = dataclasses.replace(cfg.evaluation, listen_utterances=0)
        off = dataclasses.replace(cfg, evaluation=no_listening)
        assert listening.write_listening_samples(model, batch, off, writer, 8, "cpu") == 0
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)  # the global RNG stream is not consumed
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["listen/utt-a", "listen/utt-a/reference"]
    clips = events.Audio("listen/utt-a")
    assert [c.step for c in clips] == [7, 9] and clips[0].sample_rate == 24000
    (ref,) = events.Audio("listen/utt-a/reference")  # written once, it never changes
    assert ref.step == 7 and ref.length_frames == 30 * 320  # the utterance's own codes, decoded
    # prompt (first third: 10 frames) + generated frames, at most 1.5 x the 20 remaining ones
    assert 10 * 320 < clips[0].length_frames <= (10 + 30) * 320
