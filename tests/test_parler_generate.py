"""Parler-TTS generation against the package's greedy runs (fixture parler_tts_tiny): EOS stop and
cap stop, cached and uncached; batches give every item its single-item result; sampling draws
of an item do not depend on its batch."""

from __future__ import annotations

import pytest
import torch
from parler_fixture import load_fixture, load_model

from models.tts.parler.generate import generate


@pytest.fixture(scope="module")
def world():
    inputs, expected = load_fixture()
    return load_model(), inputs, expected


def run(model, inp, key, n, **kw):
    return generate(
        model,
        inp[key + "input_ids"],
        inp[key + "attention_mask"],
        inp[key + "prompt_input_ids"],
        inp[key + "prompt_attention_mask"],
        max_new_tokens=n,
        **kw,
    )


def check(results, exp, prefix):
    assert torch.equal(torch.cat([r.raw for r in results]), exp[prefix + "raw_sequences"])
    assert torch.equal(torch.cat([r.delayed for r in results]), exp[prefix + "delayed_codes"])
    assert torch.equal(torch.stack([r.undelayed for r in results]), exp[prefix + "undelayed_codes"])
    first = torch.cat([r.step_logits[0] for r in results])
    last = torch.cat([r.step_logits[-1] for r in results])
    assert (first - exp[prefix + "first_step_logits"]).abs().max() < 1e-4
    assert (last - exp[prefix + "last_step_logits"]).abs().max() < 1e-4
    assert len(results[0].step_logits) == int(exp[prefix + "num_steps"])


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_single_item_eos_and_cap_exact(world, use_cache):
    model, inp, exp = world
    res = run(model, inp, "gen_", 40, use_cache=use_cache, record_logits=True)
    check(res, exp, "greedy_")
    assert res[0].stop == "eos"
    assert torch.equal(res[0].codes, exp["greedy_dac_codes"].t())
    res = run(model, inp, "gen_", 12, use_cache=use_cache, record_logits=True)
    check(res, exp, "greedy_cap_")
    assert res[0].stop == "cap"
    assert torch.equal(res[0].codes, exp["greedy_cap_dac_codes"].t())


def test_package_positions_reproduce_the_package_batch(world):
    """Per-item EOS pointers and finished rows inside a batch, exactly as the package's batch."""
    model, inp, exp = world
    res = run(model, inp, "genb_", 40, package_positions=True, record_logits=True)
    check(res, exp, "greedy_batch_")
    assert torch.equal(res[0].codes, exp["greedy_batch_dac_codes_0"].t())
    assert torch.equal(res[1].codes, exp["greedy_batch_dac_codes_1"].t())


def batch_with_fixture_item(inp):
    """[fixture gen_ item, genb_ item 0, genb_ item 1], right-padded descriptions, left-padded
    prompts (as the package's training script pads them)."""
    desc = [inp["gen_input_ids"][0]] + [inp["genb_input_ids"][b, :n] for b, n in enumerate([9, 6])]
    prompt = [inp["gen_prompt_input_ids"][0]] + [
        inp["genb_prompt_input_ids"][b, -n:] for b, n in enumerate([4, 7])
    ]
    S, P = max(map(len, desc)), max(map(len, prompt))
    ids = torch.stack([torch.nn.functional.pad(d, (0, S - len(d))) for d in desc])
    mask = torch.stack([torch.arange(S) < len(d) for d in desc]).long()
    pids = torch.stack([torch.nn.functional.pad(p, (P - len(p), 0)) for p in prompt])
    pmask = torch.stack([torch.arange(P) >= P - len(p) for p in prompt]).long()
    return (desc, prompt), (ids, mask, pids, pmask)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_gives_each_item_its_single_item_result(world, use_cache):
    model, inp, exp = world
    (desc, prompt), batch = batch_with_fixture_item(inp)
    res = generate(model, *batch, max_new_tokens=40, use_cache=use_cache)
    assert torch.equal(res[0].raw, exp["greedy_raw_sequences"])  # the package's single run
    assert res[0].stop == "eos"
    for b in (1, 2):
        alone = generate(model, desc[b][None], torch.ones(1, len(desc[b]), dtype=torch.long),
                         prompt[b][None], max_new_tokens=40)[0]  # fmt: skip
        assert torch.equal(res[b].raw, alone.raw) and res[b].stop == alone.stop
    # The package's batch numbers differ for the left-padded item: not copied.
    flawed = run(model, inp, "genb_", 40, package_positions=True)
    assert not torch.equal(res[1].raw, flawed[0].raw[:, : res[1].raw.shape[1]])


def test_sampling_is_batch_independent(world):
    model, inp, _ = world
    (desc, prompt), batch = batch_with_fixture_item(inp)
    kw = dict(max_new_tokens=30, do_sample=True, top_k=50, top_p=0.9, temperature=1.2)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    res = generate(model, *batch, generators=gens([11, 12, 13]), **kw)
    for b in range(3):
        alone = generate(model, desc[b][None], torch.ones(1, len(desc[b]), dtype=torch.long),
                         prompt[b][None], generators=gens([11 + b]), **kw)[0]  # fmt: skip
        assert torch.equal(res[b].raw, alone.raw)
    again = generate(model, *batch, generators=gens([11, 12, 99]), **kw)
    assert torch.equal(again[0].raw, res[0].raw) and torch.equal(again[1].raw, res[1].raw)
    assert not torch.equal(again[2].raw, res[2].raw)  # its own seed changes only that item
    greedy = generate(model, *batch, max_new_tokens=30)
    assert any(not torch.equal(g.raw, r.raw) for g, r in zip(greedy, res, strict=True))


def test_cap_shorter_than_the_delay_gives_no_frame(world):
    model, inp, _ = world
    res = run(model, inp, "gen_", 2)[0]  # 3 columns < K + 1: no complete frame
    assert res.stop == "cap" and res.raw.shape == (4, 3)
    assert res.undelayed.shape == (4, 0) and res.codes.shape == (0, 4)


def test_length_beyond_the_position_table_is_refused_upfront(world):
    model, inp, _ = world
    calls = []
    hook = model.decoder["lm_heads"][0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="beyond max_position_embeddings = 256"):
            run(model, inp, "gen_", 251)  # 5 prompt slots + 252 columns > 256 positions
    finally:
        hook.remove()
    assert not calls  # refused before the first decoder pass
    assert run(model, inp, "gen_", 250, use_cache=True)[0].stop == "eos"
