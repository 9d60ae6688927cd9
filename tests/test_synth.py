"""The synthetic multi-domain cell generator: files, masks, seeds, class looks, domain shift."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dorl.data.images import read_cell_mask, read_mask, read_rgb
from dorl.data.synth.cells import LOOKS, draw_cell
from dorl.data.synth.domains import PRESETS, DomainError, domain_style
from dorl.data.synth.generate import (
    SYNTH_FINE_LABELS,
    SynthError,
    class_counts,
    generate,
    generate_from_config,
)
from dorl.data.taxonomy import MATURE5

BALANCED = {name: 1.0 for name in MATURE5}


@pytest.fixture
def tiny_manifest(tiny_cfg):
    return generate_from_config(tiny_cfg)


def test_class_counts_follow_the_weights_exactly():
    weights = {"neutrophil": 0.45, "lymphocyte": 0.27, "monocyte": 0.12, "eosinophil": 0.11,
               "basophil": 0.05}
    counts = class_counts(1000, weights)
    assert counts == {"neutrophil": 450, "lymphocyte": 270, "monocyte": 120, "eosinophil": 110,
                      "basophil": 50}
    counts = class_counts(24, weights)
    assert sum(counts.values()) == 24
    assert all(abs(counts[c] - 24 * weights[c]) < 1 for c in weights)
    assert class_counts(10, {"neutrophil": 3, "basophil": 1}) == {"neutrophil": 8, "basophil": 2}


@pytest.mark.parametrize("weights, problem", [
    ({"neutrophil": 1, "platelet": 1}, "platelet"),
    ({"neutrophil": -1, "basophil": 2}, "non-negative"),
    ({"neutrophil": 0}, "not all zero"),
])
def test_bad_class_weights_are_refused_by_name(weights, problem):
    with pytest.raises(SynthError, match=problem):
        class_counts(10, weights)


@pytest.mark.parametrize("kwargs, problem", [
    ({"domains": ["lab_a", "lab_zz"]}, "lab_zz"),
    ({"domains": []}, "empty"),
    ({"domains": ["lab_a", "lab_a"]}, "more than once"),
    ({"image_size": 16}, "image_size"),
    ({"n_per_domain": 0}, "n_per_domain"),
])
def test_bad_settings_are_refused_before_writing(tmp_path, kwargs, problem):
    args = {"domains": ["lab_a"], "n_per_domain": 2, "image_size": 64,
            "class_weights": BALANCED, "seed": 0, **kwargs}
    with pytest.raises((SynthError, DomainError), match=problem):
        generate(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_unknown_domain_error_lists_the_presets():
    with pytest.raises(DomainError, match="lab_a, lab_b, lab_c"):
        domain_style("lab_x")


def test_manifest_has_every_class_in_every_domain_as_configured(tiny_cfg, tiny_manifest):
    table = tiny_manifest.table
    synth = tiny_cfg.data.synth
    assert tiny_manifest.domains == list(synth.domains)
    expected = class_counts(synth.n_per_domain, dict(synth.class_weights))
    for domain, rows in table.groupby("domain"):
        assert rows["label"].value_counts().to_dict() == {k: v for k, v in expected.items() if v}
        assert set(rows["label"]) == set(MATURE5)
    assert (table["label_raw"] == table["label"]).all()
    assert (table["label_fine"] == table["label_raw"].map(SYNTH_FINE_LABELS)).all()
    for domain, rows in table.groupby("domain"):
        assert rows["path"].str.endswith(domain_style(domain).suffix).all()


def test_masks_sit_on_the_cell_near_the_centre(tiny_manifest):
    for i in range(len(tiny_manifest)):
        image = read_rgb(tiny_manifest.image_path(i)).astype(np.float32)
        raw = read_mask(tiny_manifest.mask_path(i))
        cell = read_cell_mask(tiny_manifest.mask_path(i))
        size = raw.shape[0]
        assert image.shape[:2] == raw.shape
        assert set(np.unique(raw)) == {0, 128, 255}
        assert not (cell[0].any() or cell[-1].any() or cell[:, 0].any() or cell[:, -1].any())
        rows, cols = np.nonzero(cell)
        assert abs(rows.mean() - size / 2) < 0.15 * size
        assert abs(cols.mean() - size / 2) < 0.15 * size
        nucleus, background = image[raw == 255], image[raw == 0]
        # The nucleus is darker than the smear and purple (blue above green).
        assert nucleus.sum(1).mean() < background.sum(1).mean() - 60
        assert nucleus[:, 2].mean() > nucleus[:, 1].mean() + 10


def test_mask_boundary_is_exactly_the_drawn_cell():
    clean = dataclasses.replace(PRESETS["lab_a"], vignetting=0.0, gradient=0.0, blur_px=0.0,
                                noise=0.0, red_cells=(0, 0))
    for k, cls in enumerate(LOOKS):
        image, mask = draw_cell(cls, clean, 64, np.random.default_rng(k))
        outside, inside = image[mask == 0], image[mask > 0]
        # Off the cell only the plain plasma film remains; every cell pixel differs from it.
        assert (outside == outside[0]).all()
        assert (np.abs(inside.astype(int) - outside[0]).max(axis=1) > 0).all()


def _mean_stats(cls: str, n: int = 8, size: int = 96) -> dict[str, float]:
    """Average shape and colour figures of ``n`` lab_a cells of one class."""
    figures = []
    for seed in range(n):
        image, mask = draw_cell(cls, PRESETS["lab_a"], size, np.random.default_rng(seed))
        image = image.astype(np.float32)
        cell, cyto = image[mask > 0], image[mask == 128]
        figures.append({"area": (mask > 0).mean(),
                        "nucleus_share": (mask == 255).sum() / (mask > 0).sum(),
                        "cyto_red_minus_blue": (cyto[:, 0] - cyto[:, 2]).mean(),
                        "cyto_brightness": cyto.mean(), "cell_darkness": 255 - cell.mean()})
    return {key: float(np.mean([f[key] for f in figures])) for key in figures[0]}


def test_each_class_has_its_characteristic_look():
    stats = {cls: _mean_stats(cls) for cls in LOOKS}
    # Lymphocytes: small cell, nucleus fills most of it; monocytes: the largest cells.
    assert stats["lymphocyte"]["area"] == min(s["area"] for s in stats.values())
    assert stats["monocyte"]["area"] == max(s["area"] for s in stats.values())
    assert stats["lymphocyte"]["nucleus_share"] > 0.6
    # Lymphocyte cytoplasm is blue, eosinophil cytoplasm red-orange, neutrophil pale pink.
    assert stats["lymphocyte"]["cyto_red_minus_blue"] < -20
    assert stats["eosinophil"]["cyto_red_minus_blue"] > stats["neutrophil"]["cyto_red_minus_blue"]
    assert stats["neutrophil"]["cyto_brightness"] > stats["eosinophil"]["cyto_brightness"]
    # Basophil granules darken the whole cell.
    assert stats["basophil"]["cell_darkness"] > stats["neutrophil"]["cell_darkness"]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    args = {"domains": ["lab_a", "lab_b"], "n_per_domain": 5, "image_size": 48,
            "class_weights": BALANCED}
    first = generate(tmp_path / "one", seed=3, **args)
    second = generate(tmp_path / "two", seed=3, **args)
    assert first.equals(second)
    for rel in list(first["path"]) + list(first["mask_path"]):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    other = generate(tmp_path / "three", seed=4, **args)
    assert not set(other["sha256"]) & set(first["sha256"])


def test_a_domain_does_not_depend_on_the_others(tmp_path):
    args = {"n_per_domain": 4, "image_size": 48, "class_weights": BALANCED, "seed": 0}
    alone = generate(tmp_path / "alone", domains=["lab_b"], **args)
    mixed = generate(tmp_path / "mixed", domains=["lab_c", "lab_b"], **args)
    assert list(alone["sha256"]) == list(mixed.loc[mixed["domain"] == "lab_b", "sha256"])


def _colour_histograms(root, paths) -> np.ndarray:
    """Per-channel 16-bin colour histograms, shape (n, 48)."""
    out = []
    for p in paths:
        image = read_rgb(root / p)
        out.append(np.concatenate([np.histogram(image[..., c], bins=16, range=(0, 256))[0]
                                   for c in range(3)]) / image[..., 0].size)
    return np.stack(out)


def test_domains_differ_in_colour_and_break_a_pixel_classifier(tmp_path):
    rows = generate(tmp_path, ["lab_a", "lab_b", "lab_c"], 60, 48, BALANCED, seed=0)
    features = _colour_histograms(tmp_path, rows["path"])
    labels, domains = rows["label_raw"].to_numpy(), rows["domain"].to_numpy()
    means = {d: np.stack([read_rgb(tmp_path / p).reshape(-1, 3).mean(0)
                          for p in rows.loc[rows["domain"] == d, "path"]]).mean(0)
             for d in ("lab_a", "lab_b", "lab_c")}
    for a, b in (("lab_a", "lab_b"), ("lab_a", "lab_c"), ("lab_b", "lab_c")):
        assert np.abs(means[a] - means[b]).max() > 8, (a, b, means)

    source = domains == "lab_a"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    in_domain = cross_val_score(model, features[source], labels[source], cv=3,
                                scoring="f1_macro").mean()
    model.fit(features[source], labels[source])
    for target in ("lab_b", "lab_c"):
        chosen = domains == target
        cross = f1_score(labels[chosen], model.predict(features[chosen]), average="macro")
        assert in_domain > 0.8
        assert cross < in_domain - 0.3, (target, in_domain, cross)
