"""One artifact policy: which config keys rebuild which of the reused artifacts."""

from __future__ import annotations

import logging

import pytest

from dorl.artifacts import (
    ADAPTER,
    CAE_CHECKPOINT,
    CELL_FEATURES,
    FEATURE_FILE,
    SEGMENTATION,
    ArtifactMismatchError,
    reusable,
)
from dorl.config import load_config
from tests.conftest import REPO


def chain(cfg) -> dict[str, str]:
    """Every artifact's signature, each made from its upstream as `dorl embed` makes it."""
    adapter = ADAPTER.signature(cfg, "data", "checkpoint")
    segmentation = SEGMENTATION.signature(cfg, "data", "checkpoint", adapter)
    cae = CAE_CHECKPOINT.signature(cfg, "data", segmentation)
    # The cell features are made with the adapted encoder, whose hash stands in for it.
    return {"adapter": adapter, "segmentation": segmentation,
            "cell_features": CELL_FEATURES.signature(cfg, segmentation, cae),
            "cae": cae,
            "feature_file": str(FEATURE_FILE.parts(cfg))}


ALL = {"adapter", "segmentation", "cell_features", "cae", "feature_file"}
AFTER_SEGMENTATION = {"cell_features", "cae", "feature_file"}


@pytest.mark.parametrize("key,value,rebuilt", [
    ("seed", 1, ALL),
    ("sam.backbone", "tiny", ALL),
    ("sam.lora.rank", 8, ALL),
    ("sam.finetune.epochs", 1, ALL),  # a new adapter is new segmentation input
    ("sam.infer.stored_crop_size", 64, {"segmentation"} | AFTER_SEGMENTATION),
    ("features.tta", 8, AFTER_SEGMENTATION),
    ("features.encoders", ["litemedsam"], AFTER_SEGMENTATION),
    ("cae.epochs", 3, AFTER_SEGMENTATION),
    ("cae.loss.mmd", 1.0, AFTER_SEGMENTATION),
    ("data.label_space", "dorl13", AFTER_SEGMENTATION),
    ("sam.eval.max_images", 5, set()),
    ("classify.n_folds", 3, set()),
    ("classify.classifiers", ["logreg"], set()),
    ("umap.n_neighbors", 7, set()),
    ("run_dir", "elsewhere", set()),
    ("num_threads", 1, set()),
])
def test_which_artifacts_a_key_rebuilds(key, value, rebuilt):
    base = load_config(REPO / "configs" / "default.yaml")
    changed = load_config(REPO / "configs" / "default.yaml", [f"{key}={value}"])
    before, after = chain(base), chain(changed)
    assert {name for name in ALL if before[name] != after[name]} == rebuilt


def test_reusable_reuses_rebuilds_or_refuses(caplog, tmp_path):
    with caplog.at_level(logging.INFO):
        assert reusable(ADAPTER, tmp_path, "abc", "abc")
        assert not reusable(ADAPTER, tmp_path, "abc", "abd")
        assert not reusable(ADAPTER, tmp_path, None, "abd")
    assert "reused" in caplog.text and "made again" in caplog.text
    with pytest.raises(ArtifactMismatchError, match="cae: it has 'x', this run has 'y'"):
        reusable(FEATURE_FILE, tmp_path, {"cae": "x", "seed": "0"}, {"cae": "y", "seed": "0"},
                 refuse=True)
