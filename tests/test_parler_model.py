"""Parler-TTS teacher forcing against the parler-tts package's outputs (fixture parler_tts_tiny):
T5 memory, decoder inputs, logits and losses, labels and the delay pattern."""

from __future__ import annotations

import pytest
import torch
from parler_fixture import load_fixture, load_model, rel_err

from models.tts.parler.delay import (
    collate_labels,
    decoder_inputs,
    delay_pattern,
    delayed_labels,
    undelay,
)
from models.tts.parler.parler import sinusoid_table

BOS, EOS = 1025, 1024


@pytest.fixture(scope="module")
def world():
    inputs, expected = load_fixture()
    return load_model(), inputs, expected


def teacher_forced(model, inp, **kw):
    with torch.no_grad():
        return model(
            inp["input_ids"],
            inp["attention_mask"],
            inp["prompt_input_ids"],
            inp["prompt_attention_mask"],
            labels=inp["labels"],
            **kw,
        )


def test_labels_and_decoder_inputs_as_the_package_builds_them(world):
    _, inp, _ = world
    items = [delayed_labels(inp["codes"][b, :, : inp["code_lens"][b]], BOS, EOS) for b in range(2)]
    labels = collate_labels(items)
    assert torch.equal(labels, inp["labels"])
    assert torch.equal(decoder_inputs(labels, BOS, EOS), inp["decoder_input_ids"])


def test_delay_pattern_and_undelay_match_generation(world):
    _, _, exp = world
    M = delay_pattern(torch.full((4, 1), BOS), BOS, EOS, 41)
    assert torch.equal(M, exp["greedy_delay_pattern_mask"])
    assert torch.equal(delay_pattern(torch.full((4, 1), BOS), BOS, EOS, 13),
                       exp["greedy_cap_delay_pattern_mask"])  # fmt: skip
    assert torch.equal(undelay(exp["greedy_delayed_codes"]), exp["greedy_undelayed_codes"][0])
    assert undelay(torch.zeros(9, 6)).shape == (9, 0)  # shorter than the delay: no frame


def test_sinusoid_table_is_the_stored_one(world):
    model, _, _ = world
    stored = model.stack.embed_positions.weights
    assert torch.equal(sinusoid_table(*stored.shape), stored)


def test_teacher_forced_logits_and_losses_exact(world):
    """package_positions: the fixture's batch has a left-padded prompt, counted by the package."""
    model, inp, exp = world
    out = teacher_forced(model, inp, package_positions=True)
    assert rel_err(out.encoder_hidden_states, exp["encoder_hidden_states"]) < 1e-5
    assert rel_err(out.inputs_embeds, exp["decoder_input_embeds"]) < 1e-5
    real = torch.cat([inp["prompt_attention_mask"].bool(), torch.ones(2, 13, dtype=torch.bool)], 1)
    assert rel_err(out.hidden_states[real], exp["decoder_last_hidden_state"][real]) < 1e-5
    assert rel_err(out.logits, exp["logits"]) < 1e-5
    assert torch.equal(out.loss_mask, exp["loss_mask"])
    assert rel_err(out.loss, torch.as_tensor(exp["loss"])) < 1e-5
    assert rel_err(out.per_codebook_loss, exp["per_codebook_loss"]) < 1e-5
    out = teacher_forced(model, inp, package_positions=True, loss_reduction="sum")
    assert rel_err(out.loss, torch.as_tensor(exp["loss_sum"])) < 1e-5
    assert rel_err(out.per_codebook_loss, exp["per_codebook_loss_sum"]) < 1e-5


def test_default_positions_give_each_item_its_single_item_logits(world):
    """Item 0 has a 4-token prompt left-padded to 7: by default it gets the logits it gets alone
    (which the package's batch does not give it); item 1 (no padding) is the package's."""
    model, inp, exp = world
    out = teacher_forced(model, inp)
    assert rel_err(out.logits[1], exp["logits"][1]) < 1e-5
    assert rel_err(out.logits[0], exp["logits"][0]) > 1e-2  # the package's flaw is not copied
    n_desc, n_prompt, T = 9, 4, int(inp["code_lens"][0]) + 4
    with torch.no_grad():
        alone = model(
            inp["input_ids"][:1, :n_desc],
            inp["attention_mask"][:1, :n_desc],
            inp["prompt_input_ids"][:1, -n_prompt:],
            labels=inp["labels"][:1, :T],
        )
    assert rel_err(out.logits[0, :, :T], alone.logits[0]) < 1e-5


def test_right_padded_prompt_gives_the_same_logits(world):
    model, inp, _ = world
    left = teacher_forced(model, inp)
    right = dict(inp)
    ids, mask = inp["prompt_input_ids"].clone(), inp["prompt_attention_mask"]
    n = int(mask[0].sum())
    ids[0] = torch.cat([ids[0, -n:], torch.zeros(7 - n, dtype=torch.long)])
    right["prompt_input_ids"] = ids
    right["prompt_attention_mask"] = torch.tensor([[1] * n + [0] * (7 - n), [1] * 7])
    assert rel_err(teacher_forced(model, right).logits, left.logits) < 1e-5


def test_training_step_trains_the_decoder_not_the_text_encoder(world):
    _, inp, exp = world
    model = load_model().train()  # own copy: gradients and dropout do not touch the fixture's
    args = [inp[k] for k in ("input_ids", "attention_mask", "prompt_input_ids")]
    out = model(*args, inp["prompt_attention_mask"], labels=inp["labels"], package_positions=True)
    out.loss.backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.embed_prompts.weight.grad is not None
    assert model.decoder["lm_heads"][0].weight.grad.abs().sum() > 0
    assert model.stack.embed_positions.weights.grad is None  # the sinusoid table stays fixed
    assert abs(out.loss.item() - exp["loss"]) > 1e-4  # dropout is active in training mode
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: finite, close
        low = model.eval()(*args, inp["prompt_attention_mask"], labels=inp["labels"],
                           package_positions=True)  # fmt: skip
    assert abs(low.loss.item() - exp["loss"]) < 0.05 * exp["loss"]
