"""Top-k / top-p / temperature filtering and seeded sampling (modules/sampling.py)."""

from __future__ import annotations

import inspect
import math
import re

import torch

from models.tts.valle.valle import VALLE
from modules.masks import pad_1d
from modules.sampling import filter_logits, sample
from utils.config import REPO_ROOT, InferenceConfig, ModelConfig, read_json5


def kept(logits: torch.Tensor) -> list[set[int]]:
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]


def test_top_k_keeps_the_k_best_tokens_of_each_row():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert kept(filter_logits(logits, top_k=2)) == [{1, 3}, {0, 1}]
    assert kept(filter_logits(logits, top_k=10)) == [set(range(5))] * 2  # k > vocab: keep all
    assert kept(filter_logits(logits, top_k=0)) == [set(range(5))] * 2  # 0 = off


def test_top_k_keeps_ties_with_the_kth_token():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert kept(filter_logits(logits, top_k=1)) == [{1, 2}]


def test_top_p_keeps_the_smallest_set_exceeding_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    # Sorted: 0.5, 0.3, 0.15, 0.05 -> cumulative 0.5, 0.8, 0.95, 1.0.
    assert kept(filter_logits(logits, top_p=0.45)) == [{0}]
    assert kept(filter_logits(logits, top_p=0.6)) == [{0, 2}]  # the crossing token is kept
    assert kept(filter_logits(logits, top_p=0.9)) == [{0, 2, 3}]
    assert kept(filter_logits(logits, top_p=0.01)) == [{0}]  # the best token always survives
    assert kept(filter_logits(logits, top_p=1.0)) == [{0, 1, 2, 3}]


def test_top_k_then_top_p():
    logits = torch.tensor([[0.5, 0.05, 0.3, 0.15]]).log()
    # top_k=3 drops 0.05; renormalised (0.526, 0.316, 0.158): p=0.8 needs 0 and 2.
    assert kept(filter_logits(logits, top_k=3, top_p=0.8)) == [{0, 2}]


def test_filter_does_not_modify_its_input():
    logits = torch.randn(2, 7)
    before = logits.clone()
    filter_logits(logits, top_k=2, top_p=0.5)
    assert torch.equal(logits, before)


def test_greedy_is_argmax_and_uses_no_randomness():
    logits = torch.randn(4, 30)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(sample(logits, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(g.get_state(), state)


def test_samples_only_from_kept_tokens():
    logits = torch.zeros(1, 50)
    g = torch.Generator().manual_seed(1)
    draws = {
        int(sample(logits + torch.arange(50.0) * 0.01, top_k=5, generator=g)) for _ in range(200)
    }
    assert draws <= {45, 46, 47, 48, 49} and len(draws) > 1


def test_seed_reproducibility():
    logits = torch.randn(3, 100)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack([sample(logits, top_k=20, top_p=0.9, generator=g) for _ in range(20)])

    assert torch.equal(draws(5), draws(5))
    assert not torch.equal(draws(5), draws(6))


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 0.0]]).expand(4000, 2)
    g = torch.Generator().manual_seed(2)
    cold = sample(logits, temperature=0.25, generator=g).eq(0).float().mean()
    warm = sample(logits, temperature=4.0, generator=g).eq(0).float().mean()
    # p(best) = sigmoid(2 / T): 0.9997 at T = 0.25, 0.62 at T = 4.
    assert cold > 0.99
    assert abs(warm - 1 / (1 + math.exp(-0.5))) < 0.03


def test_per_row_generators_make_each_row_independent_of_the_batch():
    logits = torch.randn(3, 100)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batched = sample(logits, top_k=20, generator=gens([11, 12, 13]))
    alone = [int(sample(logits[b : b + 1], top_k=20, generator=gens([11 + b]))) for b in range(3)]
    assert batched.tolist() == alone
    flipped = sample(logits.flip(0), top_k=20, generator=gens([13, 12, 11]))
    assert flipped.flip(0).tolist() == alone


def _tiny_valle() -> VALLE:
    torch.manual_seed(0)
    cfg = ModelConfig(decoder_dim=16, nhead=2, num_decoder_layers=1, text_token_num=20, dropout=0.0)
    model = VALLE(cfg)
    with torch.no_grad():  # say EOS often, so items stop early and leave the batch
        model.ar_predict_layer.weight[model.eos_id] *= 3.0
    return model.eval()


def _generate(model, items, seeds, **kwargs):
    texts, prompts = [t for t, _ in items], [p for _, p in items]
    return model.generate(
        pad_1d(texts),
        torch.tensor([len(t) for t in texts]),
        pad_1d(prompts),
        torch.tensor([len(p) for p in prompts]),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        **kwargs,
    )


def test_sampled_generation_of_an_item_does_not_depend_on_its_batch():
    """Per-item generators: batched == alone == reordered, with items leaving the batch at
    different steps and early EOS re-decided (min_new_frames) for some of them."""
    model = _tiny_valle()
    g = torch.Generator().manual_seed(3)
    items = [
        (torch.randint(0, 20, (n,), generator=g), torch.randint(0, 1024, (p, 8), generator=g))
        for n, p in ((5, 7), (8, 3), (3, 12), (6, 5))
    ]
    seeds = [101, 102, 103, 104]
    kwargs = dict(top_k=5, temperature=1.3, max_new_frames=30, min_new_frames=4)
    batched = _generate(model, items, seeds, **kwargs)
    assert len({len(c) for c in batched.codes}) > 1  # items really left at different steps
    for b in range(4):
        alone = _generate(model, items[b : b + 1], seeds[b : b + 1], **kwargs)
        assert torch.equal(alone.codes[0], batched.codes[b]), f"item {b}"
    order = [2, 0, 3, 1]
    shuffled = _generate(model, [items[i] for i in order], [seeds[i] for i in order], **kwargs)
    for i, b in enumerate(order):
        assert torch.equal(shuffled.codes[i], batched.codes[b]), f"item {b}"
    other = _generate(model, items, [s + 1 for s in seeds], **kwargs)  # seeds matter
    assert any(not torch.equal(a, b) for a, b in zip(other.codes, batched.codes, strict=True))


def test_top_k_defaults_are_the_ones_the_readme_documents():
    """One default per entry point (stage 3 config, VALLE.generate, VALLE.inference), each the
    value README's "Decoding defaults" table gives."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("**Decoding defaults (`top_k`).**") :].split("\n\n")[1]
    documented = dict(re.findall(r"^\| (.+?) \| `(-?\d+)`", table, re.M))
    assert len(documented) == 3, documented

    def row(name: str) -> int:
        (value,) = [int(v) for k, v in documented.items() if name in k]
        return value

    def default(fn) -> int:
        return inspect.signature(fn).parameters["top_k"].default

    assert row("VALLE.generate") == default(VALLE.generate) == 1
    assert row("VALLE.inference") == default(VALLE.inference) == -100
    shipped = read_json5(REPO_ROOT / "config" / "valle.json")["inference"]["top_k"]
    assert row("stage 3") == shipped == InferenceConfig().top_k
