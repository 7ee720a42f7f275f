"""TokTTS model core: character table, token layout, learning (overfit), decoding equivalences
(cached == uncached, batched == one by one, batch-independent sampling), the 1.5 kbps codec and
the model-folder pipeline API. Tiny models, a few seconds on 2 CPU cores."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.codec.encodec import CodecTokenizer
from models.tts.toktts import load_model_dir, save_model_dir, text_to_speech_pipeline
from models.tts.toktts.decode import generate
from models.tts.toktts.model import (
    IGNORE,
    CharTable,
    TokTTS,
    TokTTSConfig,
    UnknownCharacterError,
    codes_to_tokens,
    legal_mask,
    make_batch,
    tokens_to_codes,
)
from models.tts.toktts.pipeline import ModelDirError
from utils.config import ConfigError
from utils.seeding import utterance_generators

pytestmark = pytest.mark.filterwarnings("ignore:RANDOM-INIT CODEC")

TEXTS = ["hello world.", "a cat sat", "no, not here!"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is ~10x faster than two on a busy 2-core machine (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(chars: CharTable, **overrides) -> TokTTSConfig:
    kwargs = dict(vocab_size=len(chars), dim=64, nhead=2, encoder_layers=1, decoder_layers=2)
    kwargs.update(dropout=0.0, max_audio_seconds=0.2)  # 15 frames = 30 tokens
    kwargs.update(overrides)
    return TokTTSConfig(**kwargs)


def ids(chars: CharTable, text: str) -> torch.Tensor:
    return torch.tensor(chars.encode(text))


@pytest.fixture(scope="module")
def chars() -> CharTable:
    return CharTable.from_texts(TEXTS)


@pytest.fixture(scope="module")
def random_model(chars) -> TokTTS:
    torch.manual_seed(0)
    return TokTTS(tiny_config(chars)).eval()


@pytest.fixture(scope="module")
def overfit(chars):
    """A tiny model trained with plain AdamW on two utterances: 9 frames (ends: EOS) and 20
    frames (cut at the 15-frame cap: no EOS). Trained until teacher forcing is 100% right."""
    torch.manual_seed(0)
    model = TokTTS(tiny_config(chars))
    g = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, 1024, (n, 2), generator=g) for n in (9, 20)]
    batch = make_batch(model.cfg, [ids(chars, t) for t in TEXTS[:2]], codes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    real = batch.targets != IGNORE
    steps = 0
    while steps < 200:
        loss, correct = model.loss(batch)
        if bool(correct[real].all()) and loss.item() < 0.1:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
    return model.eval(), codes, steps


# ------------------------------------------------------------------------- characters, config


def test_char_table_round_trip_and_unknown_characters(tmp_path, chars):
    table = CharTable.from_texts(["Héllo wörld", "a\tb"])
    assert len(table) == len(set("Héllo wörlda\tb")) + 1  # + padding id 0
    table.save(tmp_path / "chars.json")
    loaded = CharTable.load(tmp_path / "chars.json")
    assert loaded.chars == table.chars
    assert loaded.encode("wörld") == table.encode("wörld")
    assert 0 not in table.encode("a\tb")
    assert loaded.decode(loaded.encode("Héllo wörld")) == "Héllo wörld"
    with pytest.raises(UnknownCharacterError, match=r"'Z', 'ß'"):
        table.encode("Zoß")
    with pytest.raises(ValueError, match="empty text"):
        table.encode("")
    (tmp_path / "other.json").write_text('{"chars": ["a"]}')
    with pytest.raises(ValueError, match="not a character table"):
        CharTable.load(tmp_path / "other.json")


def test_config_rejects_unknown_keys_and_wrong_types():
    assert TokTTSConfig.from_dict({"vocab_size": 30, "dim": 32}).dim == 32
    with pytest.raises(ConfigError, match=r"m\.json: unknown key 'dimm'.*did you mean dim"):
        TokTTSConfig.from_dict({"vocab_size": 30, "dimm": 32}, "m.json")
    with pytest.raises(ConfigError, match=r"key 'nhead': expected integer, found string"):
        TokTTSConfig.from_dict({"vocab_size": 30, "nhead": "4"})
    with pytest.raises(ConfigError, match=r"key 'nhead': must divide dim"):
        TokTTSConfig.from_dict({"vocab_size": 30, "dim": 32, "nhead": 5})
    default = TokTTSConfig(vocab_size=30)
    assert (default.max_frames, default.max_tokens, default.audio_vocab_size) == (150, 300, 2050)


# ------------------------------------------------------------------------- token layout


def test_tokens_are_frame_major_with_codebook_offsets():
    codes = torch.tensor([[1, 2], [3, 4], [5, 6]])
    tokens = codes_to_tokens(codes, 1024)
    assert tokens.tolist() == [1, 1026, 3, 1028, 5, 1030]  # f0c0, f0c1, f1c0, ...
    assert torch.equal(tokens_to_codes(tokens, 2, 1024), codes)
    cfg = TokTTSConfig(vocab_size=5, max_audio_seconds=2 / 75)  # 2 frames
    batch = make_batch(cfg, [torch.tensor([1, 2]), torch.tensor([3])], [codes[:1], codes])
    bos, eos = cfg.bos_id, cfg.eos_id
    assert batch.targets.tolist() == [[1, 1026, eos, IGNORE], [1, 1026, 3, 1028]]  # cut: no EOS
    assert batch.inputs.tolist() == [[bos, 1, 1026, eos], [bos, 1, 1026, 3]]
    legal = legal_mask(cfg, 5, torch.device("cpu"))
    assert legal[:, eos].tolist() == [False, False, True, False, True]  # frame boundaries >= 1
    assert not legal[:, bos].any()
    assert legal[1, 1024:2048].all() and not legal[1, :1024].any()


# ------------------------------------------------------------------------- learning, decoding


def test_overfit_greedy_decoding_reproduces_training_tokens(overfit, chars, random_model):
    model, codes, steps = overfit
    rows = [ids(chars, t) for t in TEXTS[:2]]
    result = generate(model, rows)
    assert result.stop_reasons == ["eos", "cap"], steps
    assert torch.equal(result.codes[0], codes[0])
    assert torch.equal(result.codes[1], codes[1][:15])
    untrained = generate(random_model, rows)
    assert not torch.equal(untrained.codes[0][: len(codes[0])], codes[0])


def test_cached_equals_uncached_and_batched_equals_one_by_one(overfit, chars, random_model):
    trained, _, _ = overfit
    rows = [ids(chars, t) for t in (TEXTS[0], "sat", TEXTS[1], TEXTS[2])]  # varied text lengths
    for model in (trained, random_model):
        batched = generate(model, rows)
        uncached = generate(model, rows, use_kv_cache=False)
        for b, row in enumerate(rows):
            alone = generate(model, [row])
            assert torch.equal(batched.codes[b], alone.codes[0]), b
            assert torch.equal(batched.codes[b], uncached.codes[b]), b
            assert batched.stop_reasons[b] == alone.stop_reasons[0]
    # The trained model stops item 0 early: it left the batch while the others went on.
    assert generate(trained, rows).stop_reasons[0] == "eos"


def test_sampling_is_batch_independent(random_model, chars):
    names = ["u1", "u2", "u3"]
    rows = [ids(chars, t) for t in TEXTS]
    kwargs = dict(top_k=50, top_p=0.9, temperature=1.2, max_frames=8)

    def run(items, seed=7, **extra):
        gens = utterance_generators(seed, [names[i] for i in items])
        return generate(random_model, [rows[i] for i in items], generators=gens, **kwargs, **extra)

    batched = run([0, 1, 2])
    assert torch.equal(run([2, 0, 1]).codes[1], batched.codes[0])  # order
    assert torch.equal(run([1]).codes[0], batched.codes[1])  # alone
    assert torch.equal(run([0, 1, 2], use_kv_cache=False).codes[2], batched.codes[2])
    assert not torch.equal(run([0, 1, 2], seed=8).codes[0], batched.codes[0])  # it samples
    greedy = generate(random_model, rows[:1], max_frames=8)
    assert not torch.equal(greedy.codes[0], batched.codes[0])


# ------------------------------------------------------------------------- codec, pipeline


def _signal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 24000
    chirp = torch.sin(2 * math.pi * (100 + 400 * t) * t) * (0.2 + 0.2 * torch.sin(7 * t))
    return (chirp + 0.05 * torch.randn(n, generator=g)).float()


@pytest.fixture(scope="module")
def codec() -> CodecTokenizer:
    """Random-init 1.5 kbps codec, k-means-initialised on a synthetic signal (as stage 1 does
    on corpus audio)."""
    codec = CodecTokenizer.build(pretrained=False, bandwidth=1.5, seed=0)
    codec.kmeans_init_([_signal(12000, 0)], seed=0)
    return codec


def test_codec_at_1p5_kbps_gives_two_codebooks_and_first_seconds(codec):
    assert codec.num_quantizers == 2
    wav = _signal(18001, 1)  # 0.75 s
    (full,) = codec.encode([wav])
    assert full.shape == (math.ceil(18001 / 320), 2) and full.dtype == torch.int64
    assert 0 <= int(full.min()) and int(full.max()) < 1024 and len(full.unique()) > 10
    (first,) = codec.encode_first_seconds([wav], 0.4)
    assert torch.equal(first, full[:30])  # causal encoder: a prefix encodes to a prefix
    (short,) = codec.encode_first_seconds([wav[:5000]], 0.4)
    assert torch.equal(short, codec.encode([wav[:5000]])[0])


def test_pipeline_from_a_saved_random_init_model_dir(tmp_path, chars, random_model, codec, caplog):
    model_dir = save_model_dir(tmp_path / "toktts", random_model, chars, codec, random_init=True)
    assert json.loads((model_dir / "config.json").read_text())["random_init"] is True
    with caplog.at_level(logging.WARNING, logger="models.tts.toktts.pipeline"):
        pipeline = text_to_speech_pipeline(model_dir, device="cpu")
    assert "RANDOM-INIT TokTTS model" in caplog.text
    loaded = pipeline.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in random_model.state_dict().items())

    out = pipeline(TEXTS[0], top_k=20, top_p=0.95, temperature=0.9, seed=3)
    assert set(out) == {"audio", "sampling_rate"} and out["sampling_rate"] == 24000
    audio = out["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 15 * 320 and np.isfinite(audio).all()  # random init: hits the cap
    again = pipeline(TEXTS[0], top_k=20, top_p=0.95, temperature=0.9, seed=3)["audio"]
    assert np.array_equal(audio, again)
    short = pipeline(TEXTS[0], top_k=1, max_audio_seconds=0.04)["audio"]
    assert len(short) == 3 * 320
    with pytest.raises(UnknownCharacterError, match="'I'"):
        pipeline("I am happy you are here")


def test_model_dir_errors_name_the_file_and_leave_nothing_half_written(
    tmp_path, chars, random_model, codec
):
    with pytest.raises(ModelDirError, match=r"config\.json not found"):
        load_model_dir(tmp_path / "missing")
    with pytest.raises(ModelDirError, match="needs 2"):  # a 6 kbps codec: 8 codebooks
        save_model_dir(tmp_path / "m", random_model, chars, SimpleNamespace(num_quantizers=8,
                       bandwidth=6.0), random_init=True)  # fmt: skip
    broken = SimpleNamespace(num_quantizers=2, save=lambda d: 1 / 0)  # fails mid-way
    with pytest.raises(ZeroDivisionError):
        save_model_dir(tmp_path / "m", random_model, chars, broken, random_init=True)
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind
    model_dir = save_model_dir(tmp_path / "m", random_model, chars, codec, random_init=True)
    CharTable([chr(c) for c in range(97, 97 + len(chars))]).save(model_dir / "chars.json")
    with pytest.raises(ModelDirError, match=r"chars\.json: \d+ ids, more than the model's vocab"):
        load_model_dir(model_dir)
    other = TokTTS(tiny_config(chars, dim=32))
    save_model_dir(model_dir, other, chars, codec, random_init=True)  # replaces the folder
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["dim"] = 64
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"model\.safetensors: .*size mismatch"):
        load_model_dir(model_dir)
