"""Per-cell quality control: a blank field, a sliver and a field of red cells are flagged with
their reasons, embedded, and left out of training and scoring."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dorl.classify.inputs import load_input
from dorl.config import ConfigError, load_config
from dorl.data.manifest import load_manifest, save_manifest
from dorl.data.synth.generate import generate_from_config
from dorl.featstore import read_features
from dorl.pipeline.embed import run_embed
from dorl.sam.quality import (BACKGROUND, QCSettings, brightness_range, cell_quality,
                              stained_fraction)
from dorl.sam.segmentation import Segmentation
from tests.helpers import write_disc_manifest


@pytest.mark.parametrize("override", ["qc.min_predicted_iou=1.5", "qc.min_predicted_iou=1",
                                      "qc.area_ratio=1", "qc.max_aspect=0.5",
                                      "qc.min_stained_fraction=1", "qc.min_brightness=-1",
                                      "qc.min_contrast=300"])
def test_qc_settings_refuse_a_bound_they_cannot_apply(override):
    with pytest.raises(ConfigError, match="qc: needs"):
        QCSettings.from_config(load_config(None, [override]))


def test_stained_fraction_sees_nuclei_not_blank_or_red_cells():
    blank = np.full((32, 32, 3), 250, np.uint8)
    red = np.full((32, 32, 3), (225, 140, 150), np.uint8)
    nucleus = red.copy()
    nucleus[8:24, 8:24] = (90, 40, 140)  # Giemsa-purple chromatin
    assert stained_fraction(blank, 0.03) == 0.0
    assert stained_fraction(red, 0.03) == 0.0
    assert stained_fraction(nucleus, 0.03) > 0.2
    assert stained_fraction(np.full((8, 8, 3), BACKGROUND, np.uint8), 0.03) == 0.0


def test_brightness_range_tells_a_cell_from_a_black_or_washed_out_image():
    cell = np.full((32, 32, 3), (225, 180, 200), np.uint8)
    cell[8:24, 8:24] = (90, 40, 140)
    high, spread = brightness_range(cell)
    assert high > 180 and spread > 80
    # The same cell read as 16-bit when it was 12-bit: 1/16 of its brightness.
    dark_high, _ = brightness_range((cell // 16).astype(np.uint8))
    assert dark_high < 64
    washed = np.clip(cell.astype(int) + 200, 0, 255).astype(np.uint8)
    assert brightness_range(washed)[1] < 24
    assert brightness_range(np.full((8, 8, 3), BACKGROUND, np.uint8)) == (0.0, 0.0)


def test_a_mask_sam_doubts_fails_on_its_predicted_iou(tmp_path):
    """SAM's own predicted IoU under qc.min_predicted_iou fails the cell as low_iou; a centre-
    crop fallback is named as such, and a mask that did not come from SAM (NaN) passes."""
    manifest = write_disc_manifest(tmp_path, n=8, size=48)
    n = len(manifest)
    crops = np.full((n, 16, 16, 3), BACKGROUND, np.uint8)
    crops[:, 2:14, 2:14] = (225, 180, 200)  # cytoplasm
    crops[:, 4:12, 4:12] = (90, 40, 140)  # a stained nucleus
    masks = np.zeros((n, 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    iou = np.full(n, 0.9, np.float32)
    iou[[1, 2, 3]] = (0.3, 0.3, np.nan)
    fallback = np.zeros(n, bool)
    fallback[2] = True
    settings = QCSettings(True, True, 0.5, 0.01, 0.03, 3.0, 3.0, 64, 24)
    crops[4] //= 16  # too dark to be a bright-field cell
    seg = Segmentation(crops, masks, np.tile(np.float32([8, 8, 24, 24]), (n, 1)), fallback, iou)
    passed, reasons = cell_quality(manifest, seg, settings)
    assert reasons[:5].tolist() == ["", "low_iou", "fallback", "", "exposure"]
    assert passed.sum() == n - 3
    off = QCSettings(True, True, 0.0, 0.01, 0.03, 3.0, 3.0, 64, 24)
    assert cell_quality(manifest, seg, off)[1][1] == ""
    # Cells cut from a 48 px field: one box on its border, one inside it.
    field = manifest.table.loc[0, "path"]
    manifest.table.loc[[5, 6], "field"] = field
    manifest.table.loc[[5, 6], "box"] = ["0.0 10.0 20.0 30.0", "10.0 10.0 30.0 30.0"]
    assert cell_quality(manifest, seg, settings)[1][5:7].tolist() == ["edge", ""]


def test_bad_images_in_a_class_folder_are_flagged_and_never_trained_on(tiny_cfg, tmp_path):
    table = generate_from_config(tiny_cfg).table
    root = tmp_path / "data"
    bad = {"blank.png": np.full((64, 64, 3), 250, np.uint8),
           "sliver.png": np.full((20, 600, 3), (120, 60, 160), np.uint8),
           "red.png": np.full((64, 64, 3), (225, 140, 150), np.uint8)}
    rows = []
    for name, pixels in bad.items():
        Image.fromarray(pixels).save(root / name)
        row = table[table["label"] == "neutrophil"].iloc[0].copy()
        row["path"], row["sha256"], row["mask_path"] = name, name, ""
        row["group"] = name
        rows.append(row)
    save_manifest(pd.concat([table, pd.DataFrame(rows)], ignore_index=True),
                  root / "with_bad.csv")
    tiny_cfg.data.manifest = str(root / "with_bad.csv")
    load_manifest(tiny_cfg.data.manifest, "mature5")
    fs = read_features(run_embed(tiny_cfg))
    reasons = fs.obs.set_index("path")["qc_reason"]
    assert reasons["sliver.png"] == "aspect"
    assert reasons["blank.png"] in ("no_stain", "fallback")
    assert reasons["red.png"] in ("no_stain", "fallback")
    assert not fs.obs.set_index("path").loc[list(bad), "qc_pass"].any()
    assert sum(fs.uns["qc_failed"].values()) == int((~fs.obs["qc_pass"]).sum())
    inp = load_input("dorl", tiny_cfg.run_dir + "/features.h5ad")
    assert sum(inp.n_qc_failed.values()) >= 3 and len(inp.labels) == int(
        (fs.obs["qc_pass"] & (fs.obs["label"] != "unknown")).sum())
    kept = load_input("dorl", tiny_cfg.run_dir + "/features.h5ad", keep_qc_failed=True)
    assert len(kept.labels) == len(inp.labels) + sum(inp.n_qc_failed.values())
