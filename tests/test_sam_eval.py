"""Segmentation quality report: metrics, overlays, held-out scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dorl.sam.evaluate import evaluate_from_config, overlay, report_markdown
from dorl.sam.metrics import dice, iou
from tests.helpers import write_disc_manifest


def test_dice_and_iou_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, :4] = True
    assert dice(a, b) == pytest.approx(2 * 40 / 90)
    assert iou(a, b) == pytest.approx(40 / 50)
    assert dice(a, a) == 1.0 and iou(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_overlay_draws_both_outlines():
    image = np.zeros((32, 32, 3), np.uint8)
    truth = np.zeros((32, 32), bool)
    truth[4:20, 4:20] = True
    pred = np.roll(truth, 8, axis=1)
    out = overlay(image, truth, pred)
    assert (out == (0, 200, 0)).all(-1).any() and (out == (230, 0, 200)).all(-1).any()
    assert image.sum() == 0  # the input is untouched


@pytest.fixture
def disc_manifest(tmp_path):

    root = tmp_path / "discs"
    root.mkdir()
    return write_disc_manifest(root, n=8)


def test_evaluate_scores_only_held_out_cells(tiny_cfg, disc_manifest):
    tiny_cfg.sam.finetune.exclude_domains = ["lab_b"]
    tiny_cfg.sam.eval.n_overlays = 2
    tiny_cfg.sam.finetune.max_images = 8
    table = disc_manifest.table
    table["split"] = "train"
    table.loc[table.index[table["domain"] == "lab_a"][:3], "split"] = "val"
    report = evaluate_from_config(tiny_cfg, disc_manifest)
    assert report["domains"]["lab_b"]["finetuned"]["dice"]["n"] == 8
    assert report["domains"]["lab_a"]["zero_shot"]["dice"]["n"] == 3  # its val cells only
    out = Path(tiny_cfg.run_dir) / "sam_eval"
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.md").read_text() == report_markdown(report)
    assert len(list((out / "overlays").glob("lab_b_*.png"))) == 2
    for entry in report["domains"].values():
        for scores in entry.values():  # Dice >= IoU cell by cell, so on average too
            assert scores["dice"]["mean"] >= scores["iou"]["mean"]
            assert scores["dice"]["n"] == scores["iou"]["n"]
