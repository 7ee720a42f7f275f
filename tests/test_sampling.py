"""Top-k / top-p / temperature filtering and seeded sampling (modules/sampling.py)."""

from __future__ import annotations

import math

import torch

from modules.sampling import filter_logits, sample


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
