"""Label-free pseudo-masks: whole cells (nucleus + pale cytoplasm), touching red cells cut off,
quality checks that name the failure, and agreement with the synthetic cells' true masks."""

from __future__ import annotations

import numpy as np
import torch

from dorl.sam.metrics import dice
from dorl.sam.pseudo_masks import (
    PseudoMaskChecks,
    bootstrap_pseudo_masks,
    check_pseudo_mask,
    colour_mask,
    split_from_neighbours,
)

BACKGROUND = (240, 210, 200)  # pink-white plasma
RED_CELL = (205, 165, 185)  # lilac-pink: as blue as pale cytoplasm in b*
NUCLEUS = (90, 40, 140)


def _disc(size, cx, cy, radius):
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2


def _cell(size=96, radius=24, cytoplasm=(170, 150, 210), red_cell=False):
    """A white cell (nucleus of half its radius) on plasma, optionally with a touching red cell.

    Returns the image (size, size, 3), the whole-cell mask and the red-cell mask (size, size).
    """
    c = size / 2
    mask = _disc(size, c, c, radius)
    red = _disc(size, c + radius + 9, c, 13) & ~mask if red_cell else np.zeros_like(mask)
    image = np.full((size, size, 3), BACKGROUND, np.uint8)
    image[red] = RED_CELL
    image[mask] = cytoplasm
    image[_disc(size, c, c, radius / 2)] = NUCLEUS
    return image, mask, red


def test_colour_mask_finds_a_purple_cell():
    image, mask, _ = _cell()
    assert dice(colour_mask(image), mask) > 0.9
    assert not colour_mask(np.full((32, 32, 3), 200, np.uint8)).any()


def test_colour_mask_keeps_a_pale_cytoplasm_ring():
    image, mask, _ = _cell(cytoplasm=(222, 212, 232))  # barely bluer than the plasma
    nucleus = _disc(96, 48, 48, 12)
    found = colour_mask(image)
    assert found.sum() > 2.5 * nucleus.sum()  # not the nucleus alone
    assert dice(found, mask) > 0.9


def test_colour_mask_cuts_off_a_touching_red_cell():
    image, mask, red = _cell(red_cell=True)
    found = colour_mask(image)
    assert dice(found, mask) > 0.9
    assert (found & red).sum() < 0.1 * red.sum()
    assert check_pseudo_mask(found, None, PseudoMaskChecks()) is None


def test_split_from_neighbours_stops_at_the_neck():
    left, right = _disc(64, 20, 32, 12), _disc(64, 42, 32, 12)
    seed = _disc(64, 20, 32, 4)
    part = split_from_neighbours(left | right, seed)
    assert dice(part, left) > 0.9 and not part[32, 50]


def test_pseudo_masks_match_the_true_masks_of_synthetic_cells():
    from dorl.data.synth.cells import draw_cell
    from dorl.data.synth.domains import domain_style

    scores, kept = [], 0
    for lab in ("lab_a", "lab_b", "lab_d"):
        for index, cls in enumerate(["neutrophil", "lymphocyte", "monocyte", "eosinophil"] * 2):
            image, truth = draw_cell(cls, domain_style(lab), 128, np.random.default_rng(index))
            found = colour_mask(image)
            if check_pseudo_mask(found, None, PseudoMaskChecks()) is None:
                kept += 1
                scores.append(dice(found, truth > 0))
    assert kept >= 12 and np.mean(scores) > 0.85


def test_pseudo_mask_checks_name_the_failure():
    _, mask, _ = _cell()
    checks = PseudoMaskChecks(min_agreement=0.85)
    assert check_pseudo_mask(mask, mask, checks) is None
    assert check_pseudo_mask(mask, np.roll(mask, 30, axis=1), checks) == "disagree"
    assert check_pseudo_mask(mask, np.roll(mask, 30, axis=1), PseudoMaskChecks()) is None
    border = np.zeros_like(mask)
    border[:40, :40] = True
    assert check_pseudo_mask(border, border, checks) == "border"
    small = np.zeros_like(mask)
    small[40:44, 40:44] = True
    assert check_pseudo_mask(small, small, checks) == "area"
    two = np.zeros_like(mask)
    two[20:40, 10:30] = True
    two[50:70, 60:80] = True
    assert check_pseudo_mask(two, two, checks) == "shape"
    bumpy = mask | _disc(96, 48 + 32, 48, 10)  # a red cell left attached
    assert check_pseudo_mask(bumpy, bumpy, checks) == "shape"


def test_bootstrap_keeps_good_colour_masks_and_drops_bad_ones():
    image, mask, _ = _cell()
    blank = np.full((96, 96, 3), 230, np.uint8)
    masks, counts = bootstrap_pseudo_masks([image, blank], 64)
    assert counts["kept"] == 1 and masks[1] is None
    small = torch.from_numpy(mask)[None, None].float()
    small = torch.nn.functional.interpolate(small, size=(64, 64))[0, 0].numpy() > 0.5
    assert masks[0].shape == (64, 64) and dice(masks[0], small) > 0.9
