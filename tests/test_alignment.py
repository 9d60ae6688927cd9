"""Alignment losses (multi-kernel MMD, pairwise mean) and balanced batches."""

import numpy as np
import pytest
import torch

from dorl.cae.alignment import mmd2, pairwise_alignment
from dorl.cae.batches import DomainBalancedBatches


def _normal(n, d=4, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * std + mean


def test_mmd_is_zero_for_identical_samples_and_grows_with_shift():
    x = _normal(200)
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-9)
    same = float(mmd2(x, _normal(200, seed=1)))
    shifted = float(mmd2(x, _normal(200, mean=1.0, seed=1)))
    assert 0.0 <= same < shifted
    assert shifted > 10 * same


def test_mmd_sees_a_difference_in_spread_that_mean_matching_misses():
    x, y = _normal(400, seed=0), _normal(400, std=3.0, seed=1)
    mean_gap = float((x.mean(0) - y.mean(0)).pow(2).mean())
    same = float(mmd2(x, _normal(400, seed=2)))
    assert mean_gap < 0.05  # what the reference code's "MMD" measures: nearly nothing
    assert float(mmd2(x, y)) > 10 * same


def test_mmd_is_scale_free_and_differentiable():
    x, y = _normal(100), _normal(100, mean=0.5, seed=1)
    assert float(mmd2(10 * x, 10 * y)) == pytest.approx(float(mmd2(x, y)), rel=1e-6)
    x.requires_grad_(True)
    mmd2(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_pairwise_alignment_averages_every_pair():
    z = torch.cat([_normal(50, mean=float(m), seed=m) for m in range(3)])
    d = torch.arange(3).repeat_interleave(50)
    parts = [z[d == i] for i in range(3)]
    expected = np.mean([float(mmd2(parts[a], parts[b])) for a, b in ((0, 1), (0, 2), (1, 2))])
    assert float(pairwise_alignment(z, d, mmd2)) == pytest.approx(expected)
    assert float(pairwise_alignment(z[:50], d[:50], mmd2)) == 0.0


def test_every_batch_holds_every_domain_even_a_tiny_one():
    domains = np.array([0] * 50 + [1] * 3 + [2] * 20)
    batches = DomainBalancedBatches(domains, per_domain=8, seed=0)
    assert len(batches) == 7  # ceil(50 / 8): the largest domain is covered once per epoch
    seen = []
    for idx in batches.epoch(0):
        counts = np.bincount(domains[idx], minlength=3)
        assert counts.tolist() == [8, 3, 8]
        seen.extend(idx[domains[idx] == 0])
    assert set(seen) == set(range(50))


def test_batches_depend_only_on_seed_and_epoch():
    domains = np.repeat([0, 1], 30)
    a = list(DomainBalancedBatches(domains, 8, seed=1).epoch(3))
    b = list(DomainBalancedBatches(domains, 8, seed=1).epoch(3))
    c = list(DomainBalancedBatches(domains, 8, seed=1).epoch(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
