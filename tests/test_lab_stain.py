"""Cross-lab colour views: each lab's stain statistics, and a cell rendered in another lab's."""

import numpy as np
import torch

from dorl.cae.lab_stain import FILL, lab_stain, other_labs, swap_stain


def _lab(rng, n, colour, spread):
    """n crops (n, 16, 16, 3) of one stain: a cell of ``colour`` +- ``spread`` on the fill."""
    crops = np.full((n, 16, 16, 3), FILL, np.uint8)
    cell = np.asarray(colour) + rng.normal(0, spread, (n, 8, 8, 3))
    crops[:, 4:12, 4:12] = np.clip(cell, 1, 254).round()
    return crops


def _two_labs():
    rng = np.random.default_rng(0)
    crops = np.concatenate([_lab(rng, 40, (200, 120, 190), 12), _lab(rng, 40, (150, 90, 210), 6)])
    return crops, np.repeat([0, 1], 40)


def test_a_cell_rendered_in_another_lab_s_stain_takes_that_lab_s_statistics():
    crops, domains = _two_labs()
    stain = lab_stain(crops, domains, np.arange(len(crops)), 2)
    assert not np.allclose(stain.mean[0], stain.mean[1], atol=0.05)
    a = np.flatnonzero(domains == 0)
    rendered = swap_stain(torch.from_numpy(crops[a]), domains[a], np.ones(len(a), int), stain)
    after = lab_stain(rendered.numpy(), np.zeros(len(a), int), np.arange(len(a)), 1)
    np.testing.assert_allclose(after.mean[0], stain.mean[1], atol=0.02)
    np.testing.assert_allclose(after.std[0], stain.std[1], rtol=0.15)


def test_rendering_in_the_own_lab_s_stain_keeps_the_cell_and_the_fill_is_never_changed():
    crops, domains = _two_labs()
    stain = lab_stain(crops, domains, np.arange(len(crops)), 2)
    x = torch.from_numpy(crops)
    same = swap_stain(x, domains, domains, stain)
    assert int((same.int() - x.int()).abs().max()) <= 1
    moved = swap_stain(x, domains, 1 - domains, stain)
    fill = (x == FILL).all(dim=-1)
    assert torch.equal(moved[fill], x[fill])
    assert float((moved.float() - x.float()).abs().mean()) > 5


def test_another_lab_is_never_the_cell_s_own_and_one_lab_keeps_its_own():
    crops, domains = _two_labs()
    stain = lab_stain(crops, np.repeat([0, 2, 3, 3], 20), np.arange(80), 4)
    labs = np.repeat([0, 2, 3, 3], 20)
    drawn = other_labs(labs, stain, torch.Generator().manual_seed(0))
    assert not np.any(drawn == labs) and set(drawn) <= {0, 2, 3} and set(drawn) == {0, 2, 3}
    alone = lab_stain(crops, domains, np.flatnonzero(domains == 1), 2)
    assert np.array_equal(other_labs(np.ones(5, int), alone, torch.Generator()), np.ones(5))
