"""VALL-E model: equivalence with Amphion's own code (fixture), decoding paths, checkpoints,
training forward/backward.

The fixture (../shared/fixtures/amphion_valle_tiny, README there) holds outputs computed by
Amphion's VALLE; everything else compares two of our own code paths that must agree (cached vs
reference loop, batched vs one at a time) or checks a property (loss of a padded batch equals the
sum of the unpadded items, EOS suppression, reproducible sampling).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, load_model, save_model

from models.tts.valle.valle import VALLE
from utils.config import ModelConfig

FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "amphion_valle_tiny"
V = 1024


@pytest.fixture(autouse=True)
def _one_thread():
    # The fixture was made with one thread; small models are also fastest this way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture() -> dict:
    if not FIXTURE.is_dir():
        pytest.skip(f"Amphion fixture not found at {FIXTURE}")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    return {
        "model_cfg": cfg["model"],
        "seeds": cfg["seeds"],
        "state_dict": torch.load(FIXTURE / "state_dict.pt", weights_only=True),
        "inputs": torch.load(FIXTURE / "inputs.pt", weights_only=True),
        "expected": torch.load(FIXTURE / "expected.pt", weights_only=True),
    }


@pytest.fixture(scope="module")
def amphion_model(fixture) -> VALLE:
    model = VALLE(ModelConfig(**fixture["model_cfg"]))
    model.load_amphion_state_dict(fixture["state_dict"])
    return model.eval()


def tiny(**overrides) -> VALLE:
    """Random tiny model; dropout 0 so train-mode forwards are deterministic."""
    kwargs = dict(decoder_dim=16, nhead=2, num_decoder_layers=2, text_token_num=20, dropout=0.0)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return VALLE(ModelConfig(**kwargs)).eval()


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.float() - expected.float()).abs().max() / expected.float().abs().max()
    assert err <= rel, f"relative error {err:.3g} > {rel}"


def capture(layer: torch.nn.Module) -> tuple[dict, torch.utils.hooks.RemovableHandle]:
    out: dict = {}
    handle = layer.register_forward_hook(lambda mod, args, result: out.__setitem__("y", result))
    return out, handle


def pad(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


# ----------------------------------------------------------------- Amphion fixture


def test_fixture_ar_loss_and_logits(amphion_model, fixture):
    inp, exp = fixture["inputs"], fixture["expected"]
    logits, handle = capture(amphion_model.ar_predict_layer)
    with torch.no_grad():
        loss, metrics = amphion_model(inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 1)
    handle.remove()
    assert_close_rel(loss, exp["ar_loss_sum"])
    assert_close_rel(logits["y"], exp["ar_logits"])
    assert metrics["ar_frames"] == inp["y_lens"].sum()
    assert torch.isclose(metrics["ar_top10_correct"], exp["ar_top10acc_x_frames"], atol=1e-5)
    assert "nar_loss" not in metrics


@pytest.mark.parametrize("stage", range(1, 8))
def test_fixture_nar_stage(amphion_model, fixture, stage):
    inp, exp = fixture["inputs"], fixture["expected"]
    logits, handle = capture(amphion_model.nar_predict_layers[stage - 1])
    # Amphion drew the prefix length from the global RNG right after this seed.
    torch.manual_seed(fixture["seeds"]["nar_prefix_base"] + stage)
    with torch.no_grad():
        loss, metrics = amphion_model(
            inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 2, nar_stage=stage
        )
    handle.remove()
    assert_close_rel(loss, exp[f"nar_loss_sum_stage{stage}"])
    prefix_len = int(exp[f"nar_prefix_len_stage{stage}"])
    assert logits["y"].shape[1] == inp["y"].shape[1] - prefix_len
    if f"nar_logits_stage{stage}" in exp:
        assert_close_rel(logits["y"], exp[f"nar_logits_stage{stage}"])
    assert torch.isclose(
        metrics["nar_top10_correct"], exp[f"nar_top10acc_x_frames_stage{stage}"], atol=1e-5
    )
    assert int(metrics["nar_stage"]) == stage and "ar_loss" not in metrics


@pytest.mark.parametrize("use_kv_cache", [False, True])
def test_fixture_greedy_codes(amphion_model, fixture, use_kv_cache):
    inp, exp = fixture["inputs"], fixture["expected"]
    prompt_lens = torch.tensor([inp["y1"].shape[1]])
    result = amphion_model.generate(
        inp["x1"], inp["x1_lens"], inp["y1"], prompt_lens, inp["enroll_x_lens"],
        use_kv_cache=use_kv_cache,
    )  # fmt: skip
    assert torch.equal(result.codes[0], exp["greedy_codes"][0])
    assert result.stop_reasons == ["eos"]
    assert result.ar_steps == int(exp["greedy_ar_steps"])


def test_fixture_inference_wrapper_and_step_logits(amphion_model, fixture):
    inp, exp = fixture["inputs"], fixture["expected"]
    calls: list[torch.Tensor] = []
    handle = amphion_model.ar_predict_layer.register_forward_hook(
        lambda mod, args, out: calls.append(out)
    )
    codes = amphion_model.inference(
        inp["x1"], inp["x1_lens"], inp["y1"], inp["enroll_x_lens"], top_k=1
    )
    handle.remove()
    assert torch.equal(codes, exp["greedy_codes"])
    # One AR pass per frame plus the pass that stopped the loop.
    assert len(calls) == int(exp["greedy_ar_steps"])
    assert_close_rel(calls[0], exp["greedy_first_step_ar_logits"])
    assert_close_rel(calls[-1], exp["greedy_last_step_ar_logits"])


# ----------------------------------------------------------------- checkpoints


def test_load_accepts_either_tied_name_and_reties(fixture):
    sd = dict(fixture["state_dict"])
    without_outputs = {k: v for k, v in sd.items() if not k.startswith("nar_predict_layers.0.")}
    without_inputs = {
        k: v for k, v in sd.items() if k != "nar_audio_embeddings.2.word_embeddings.weight"
    }
    for partial in (without_outputs, without_inputs):
        model = VALLE(ModelConfig(**fixture["model_cfg"]))
        model.load_amphion_state_dict(partial)
        assert model.nar_predict_layers[0].weight is model.nar_audio_embeddings[2].weight
        assert torch.equal(model.nar_predict_layers[0].weight, sd["nar_predict_layers.0.weight"])
    # The last NAR output layer is not tied (Amphion's off-by-one).
    assert model.nar_predict_layers[6].weight is not model.nar_audio_embeddings[7].weight


def test_load_rejects_missing_and_unexpected_keys(fixture):
    model = VALLE(ModelConfig(**fixture["model_cfg"]))
    sd = dict(fixture["state_dict"])
    del sd["ar_decoder.norm.bias"]
    with pytest.raises(KeyError, match="ar_decoder.norm.bias"):
        model.load_amphion_state_dict(sd)
    sd = dict(fixture["state_dict"], **{"ar_decoder.layers.2.linear1.bias": torch.zeros(4)})
    with pytest.raises(KeyError, match="unexpected keys"):
        model.load_amphion_state_dict(sd)


def test_safetensors_round_trip(amphion_model, fixture, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(amphion_model, str(path))
    # safetensors keeps one name per tied pair; both loaders must restore the same model.
    reloaded = VALLE(ModelConfig(**fixture["model_cfg"])).eval()
    load_model(reloaded, str(path))
    via_amphion_loader = VALLE(ModelConfig(**fixture["model_cfg"])).eval()
    via_amphion_loader.load_amphion_state_dict(load_file(str(path)))
    for model in (reloaded, via_amphion_loader):
        for name, tensor in amphion_model.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor), name
        assert model.nar_predict_layers[3].weight is model.nar_audio_embeddings[5].weight
    inp = fixture["inputs"]
    with torch.no_grad():
        a = amphion_model(inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 1)[0]
        b = via_amphion_loader(inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 1)[0]
    assert torch.equal(a, b)


def test_from_config_builds_the_configured_model():
    cfg = ModelConfig(decoder_dim=16, nhead=2, num_decoder_layers=3, text_token_num=40,
                      nar_scale_factor=0.5, num_quantizers=4, prefix_mode=2)  # fmt: skip
    model = VALLE(cfg)
    assert len(model.ar_decoder.layers) == 3 and len(model.nar_decoder.layers) == 1
    assert model.nar_text_embedding.weight.shape == (40, 8)
    assert len(model.nar_predict_layers) == 3 and model.prefix_mode == 2


# ----------------------------------------------------------------- generation


def make_items(n_items: int, seed: int, text_vocab: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    texts = [torch.randint(0, text_vocab, (int(n),), generator=g) for n in
             torch.randint(3, 9, (n_items,), generator=g)]  # fmt: skip
    prompts = [torch.randint(0, V, (int(n), 8), generator=g) for n in
               torch.randint(2, 16, (n_items,), generator=g)]  # fmt: skip
    return texts, prompts


def generate_batch(model, texts, prompts, **kwargs):
    return model.generate(
        pad(texts),
        torch.tensor([len(t) for t in texts]),
        pad(prompts),
        torch.tensor([len(p) for p in prompts]),
        **kwargs,
    )


def test_batched_equals_one_by_one_and_cached_equals_uncached(amphion_model, fixture):
    inp = fixture["inputs"]
    texts, prompts = make_items(4, seed=1, text_vocab=32)
    # Item 0 is the fixture's (stops by EOS after 156 frames); the others run to a cap.
    texts.insert(0, inp["x1"][0])
    prompts.insert(0, inp["y1"][0])
    caps = torch.tensor([200, 40, 7, 25, 60])
    batched = generate_batch(amphion_model, texts, prompts, max_new_frames=caps)
    assert [len(c) for c in batched.codes] == [156, 40, 7, 25, 60]
    assert batched.stop_reasons == ["eos", "cap", "cap", "cap", "cap"]
    assert torch.equal(batched.codes[0], fixture["expected"]["greedy_codes"][0])
    uncached = generate_batch(
        amphion_model, texts, prompts, max_new_frames=caps, use_kv_cache=False
    )
    for b in range(len(texts)):
        alone = generate_batch(amphion_model, texts[b : b + 1], prompts[b : b + 1],
                               max_new_frames=int(caps[b]))  # fmt: skip
        assert torch.equal(alone.codes[0], batched.codes[b]), f"item {b}"
        assert torch.equal(uncached.codes[b], batched.codes[b]), f"item {b}"
        assert batched.codes[b].shape[1] == 8 and batched.codes[b].dtype == torch.long


@pytest.mark.parametrize(
    "overrides",
    [
        dict(prefix_mode=0),
        dict(prefix_mode=2),
        dict(prefix_mode=4, prepend_bos=True),
        dict(prefix_mode=1, norm_first=False, share_embedding=False),
        dict(prefix_mode=1, add_prenet=True),
    ],
)
def test_cached_batched_equal_reference_in_every_mode(overrides):
    model = tiny(**overrides)
    texts, prompts = make_items(4, seed=2, text_vocab=20)
    enroll = torch.tensor([2, 3, 2, 3])  # BOS + a phone or two of prompt text
    kwargs = dict(enroll_text_lens=enroll, max_new_frames=torch.tensor([5, 9, 3, 12]))
    batched = generate_batch(model, texts, prompts, **kwargs)
    reference = generate_batch(model, texts, prompts, use_kv_cache=False, **kwargs)
    for b in range(4):
        alone = generate_batch(model, texts[b : b + 1], prompts[b : b + 1],
                               enroll_text_lens=enroll[b : b + 1],
                               max_new_frames=kwargs["max_new_frames"][b])  # fmt: skip
        assert torch.equal(batched.codes[b], reference.codes[b]), f"item {b}"
        assert torch.equal(batched.codes[b], alone.codes[0]), f"item {b}"


def test_default_cap_is_16_text_frames_plus_one():
    model = tiny(prefix_mode=1)
    texts, prompts = make_items(2, seed=3, text_vocab=20)
    result = generate_batch(model, texts, prompts)
    for text, codes, reason in zip(texts, result.codes, result.stop_reasons, strict=True):
        if reason == "cap":
            assert len(codes) == 16 * len(text) + 1
        else:
            assert len(codes) <= 16 * len(text) + 1


def test_sampling_is_reproducible_with_a_seed():
    model = tiny(prefix_mode=1)
    texts, prompts = make_items(3, seed=4, text_vocab=20)

    def run(seed: int):
        return generate_batch(model, texts, prompts, top_k=50, top_p=0.9, temperature=1.2,
                              generator=torch.Generator().manual_seed(seed),
                              max_new_frames=20).codes  # fmt: skip

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(
        len(a) == len(b) and torch.equal(a, b) for a, b in zip(first, other, strict=True)
    )


def test_eos_at_first_frame_is_suppressed_with_a_warning(amphion_model, fixture, caplog):
    inp = fixture["inputs"]
    # Make EOS the best AR token everywhere.
    handle = amphion_model.ar_predict_layer.register_forward_hook(
        lambda mod, args, out: (
            out + 100.0 * torch.nn.functional.one_hot(torch.tensor(V), out.shape[-1])
        )
    )
    try:
        with caplog.at_level(logging.WARNING):
            result = amphion_model.generate(
                inp["x1"], inp["x1_lens"], inp["y1"], torch.tensor([15]),
                min_new_frames=3, item_names=["spk1_utt7"],
            )  # fmt: skip
    finally:
        handle.remove()
    assert result.codes[0].shape == (3, 8)
    assert result.stop_reasons == ["eos"]
    assert "spk1_utt7" in caplog.text and "EOS" in caplog.text


@pytest.mark.parametrize("prefix_mode", [0, 1, 2, 4])
def test_continual_regenerates_the_rest_of_the_prompt(prefix_mode):
    model = tiny(prefix_mode=prefix_mode)
    texts, prompts = make_items(3, seed=5, text_vocab=20)
    prompts = [torch.randint(0, V, (n, 8)) for n in (6, 11, 4)]
    result = generate_batch(model, texts, prompts, continual=True)
    for b, prompt in enumerate(prompts):
        split = len(prompt) // 2
        assert result.codes[b].shape == (len(prompt) - split, 8)
        assert torch.equal(result.codes[b][:, 0], prompt[split:, 0])
        alone = generate_batch(model, texts[b : b + 1], prompts[b : b + 1], continual=True)
        assert torch.equal(alone.codes[0], result.codes[b])
    assert result.ar_steps == 0


# ----------------------------------------------------------------- training forward


def random_batch(seed: int, y_lens=(13, 9, 4), x_lens=(5, 7, 3)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 20, (len(x_lens), max(x_lens)), generator=g)
    y = torch.randint(0, V, (len(y_lens), max(y_lens), 8), generator=g)
    return x, torch.tensor(x_lens), y, torch.tensor(y_lens)


@pytest.mark.parametrize("train_stage", [0, 1, 2])
@pytest.mark.parametrize(
    "overrides", [dict(prefix_mode=1), dict(prefix_mode=2, prepend_bos=True), dict(prefix_mode=4)]
)
def test_forward_backward(train_stage, overrides):
    model = tiny(**overrides).train()
    x, x_lens, y, y_lens = random_batch(6)
    # prefix_mode 4: the prompt (another utterance's chunk) comes from the data pipeline
    prompt = y.roll(1, dims=0)[:, :3] if model.prefix_mode == 4 else None
    loss, metrics = model(x, x_lens, y, y_lens, train_stage, nar_prompt_codes=prompt,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    ar_got = any(
        g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("ar_")
    )
    nar_got = any(
        g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("nar_")
    )
    assert ar_got == (train_stage in (0, 1)) and nar_got == (train_stage in (0, 2))
    assert ("ar_loss" in metrics) == (train_stage in (0, 1))
    assert ("nar_loss" in metrics) == (train_stage in (0, 2))
    if train_stage == 0:
        assert torch.isclose(loss.detach(), (metrics["ar_loss"] + metrics["nar_loss"]) / 2)


def test_short_batch_has_no_nar_prefix_instead_of_crashing():
    model = tiny(prefix_mode=1)
    x, x_lens, y, y_lens = random_batch(7, y_lens=(3, 8, 5))
    logits, handle = capture(model.nar_predict_layers[0])
    loss, _ = model(x, x_lens, y, y_lens, 2, nar_stage=1)
    handle.remove()
    assert torch.isfinite(loss) and logits["y"].shape[1] == 8  # prefix 0: every frame predicted


def test_ar_loss_ignore_padding_equals_sum_over_unpadded_items():
    x, x_lens, y, y_lens = random_batch(8)
    amphion_like = tiny(prefix_mode=1)
    corrected = tiny(prefix_mode=1, ar_loss_ignore_padding=True)
    with torch.no_grad():
        padded_amphion = amphion_like(x, x_lens, y, y_lens, 1)[0]
        padded_corrected = corrected(x, x_lens, y, y_lens, 1)[0]
        alone = sum(
            corrected(x[b : b + 1, : x_lens[b]], x_lens[b : b + 1], y[b : b + 1, : y_lens[b]],
                      y_lens[b : b + 1], 1)[0]
            for b in range(3)
        )  # fmt: skip
    assert torch.isclose(padded_corrected, alone, rtol=1e-5)
    # Amphion's default also counts the padded frames (EOS targets), so it is larger.
    assert padded_amphion > padded_corrected + 1.0


def test_nar_draws_follow_the_generator():
    model = tiny(prefix_mode=2)
    x, x_lens, y, y_lens = random_batch(9)
    with torch.no_grad():
        runs = [model(x, x_lens, y, y_lens, 2, generator=torch.Generator().manual_seed(s))
                for s in (3, 3, 4, 5, 6)]  # fmt: skip
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1]["nar_stage"] == runs[1][1]["nar_stage"]
    assert len({float(loss) for loss, _ in runs}) > 1


def test_gradient_checkpointing_gives_the_same_gradients():
    x, x_lens, y, y_lens = random_batch(10)
    grads = []
    for enabled in (False, True):
        model = tiny(prefix_mode=1).train()
        model.set_gradient_checkpointing(enabled)
        loss, _ = model(x, x_lens, y, y_lens, 0, nar_stage=2,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        loss.backward()
        grads.append(model.ar_decoder.layers[0].linear1.weight.grad.clone())
        grads.append(model.nar_decoder.layers[1].self_attn.in_proj_weight.grad.clone())
    assert torch.allclose(grads[0], grads[2]) and torch.allclose(grads[1], grads[3])


def test_generate_under_autocast_runs():
    model = tiny(prefix_mode=1)
    texts, prompts = make_items(2, seed=13, text_vocab=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = generate_batch(model, texts, prompts, max_new_frames=torch.tensor([3, 5]))
    assert [c.shape for c in result.codes] == [(3, 8), (5, 8)]


def test_bfloat16_forward_and_generate_run():
    model = tiny(prefix_mode=1).to(torch.bfloat16)
    x, x_lens, y, y_lens = random_batch(11)
    with torch.no_grad():
        loss, _ = model(x, x_lens, y, y_lens, 0, nar_stage=1)
    assert torch.isfinite(loss)
    texts, prompts = make_items(2, seed=12, text_vocab=20)
    result = generate_batch(model, texts, prompts, max_new_frames=4)
    assert [c.shape for c in result.codes] == [(4, 8), (4, 8)]


def test_an_item_capped_at_zero_frames_leaves_before_the_prefill():
    """max_new_frames 0 for one item: it stops ("cap", no frames) and the others decode as
    alone (the cached prefill used to encode every item, active or not, and crashed)."""
    model = tiny(prefix_mode=1)
    texts, prompts = make_items(3, seed=14, text_vocab=20)
    caps = torch.tensor([0, 4, 6])
    result = generate_batch(model, texts, prompts, max_new_frames=caps)
    assert [len(c) for c in result.codes] == [0, 4, 6]
    assert result.stop_reasons[0] == "cap" and result.codes[0].shape == (0, 8)
    for b in (1, 2):
        alone = generate_batch(model, texts[b : b + 1], prompts[b : b + 1],
                               max_new_frames=int(caps[b]))  # fmt: skip
        assert torch.equal(alone.codes[0], result.codes[b]), f"item {b}"
