"""Manifest validation: every problem is found and named."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dorl.data.manifest import ManifestError, load_manifest, save_manifest, val_split


def _write(tmp_path, rows):
    for r in rows:
        p = tmp_path / r["path"]
        if not p.exists() and not r.get("_missing"):
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20, 3), len(str(p)) % 256, np.uint8)).save(p)
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    df.to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_minimal_manifest_is_completed(tmp_path):
    path = _write(tmp_path, [{"path": "a/1.png", "domain": "x", "label": "monocyte"},
                             {"path": "a/22.png", "domain": "x",
                              "label_fine": "neutrophil_banded"}])
    m = load_manifest(path, "mature5")
    assert list(m.table["label"]) == ["monocyte", "neutrophil"]
    assert m.table["sha256"].str.len().eq(64).all()
    assert set(m.table["split"]) <= {"train", "val"}
    assert m.domains == ["x"] and len(m.signature()) == 16


@pytest.mark.parametrize("rows,match", [
    ([{"path": "1.png", "domain": "x", "label": "dragon"}], "outside the 'mature5' label space"),
    ([{"path": "1.png", "domain": "x", "label": "monocyte"},
      {"path": "1.png", "domain": "x", "label": "monocyte"}], "duplicate path"),
    ([{"path": "gone.png", "domain": "x", "label": "monocyte", "_missing": True}],
     "not found.*gone.png"),
    ([{"path": "1.png", "domain": "x", "label_fine": "neutrophilic"}], "neutrophilic"),
    ([{"path": "1.png", "domain": "x", "label": "monocyte"},
      {"path": "22.png", "domain": "x", "label": "basophil"},
      {"path": "333.png", "domain": "y", "label": "monocyte"}],
     r"fewer than 2 cells.*\{'y': 1\}"),
])
def test_problems_are_named(tmp_path, rows, match):
    path = _write(tmp_path, rows)
    with pytest.raises(ManifestError, match=match):
        load_manifest(path, "mature5")


def test_an_unlabelled_domain_is_accepted(tmp_path):
    rows = [{"path": f"{i}.png", "domain": d, "label": "monocyte" if d == "x" else "unknown"}
            for i, d in enumerate("xxyy")]
    assert load_manifest(_write(tmp_path, rows), "mature5").domains == ["x", "y"]


def test_missing_columns_and_file(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,monocyte\n")
    with pytest.raises(ManifestError, match="missing required column.*path"):
        load_manifest(tmp_path / "m.csv", "mature5")
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "none.csv", "mature5")


def test_split_is_stable_and_roughly_sized():
    hashes = pd.Series([f"{i * 2654435761 % 2**32:08x}" + "0" * 56 for i in range(2000)])
    split = val_split(hashes, 0.1)
    assert 0.07 < (split == "val").mean() < 0.13
    assert split.equals(val_split(hashes, 0.1))


def test_round_trip(tmp_path):
    path = _write(tmp_path, [{"path": "1.png", "domain": "x", "label": "basophil"},
                             {"path": "22.png", "domain": "x", "label": "monocyte"}])
    m = load_manifest(path, "mature5")
    save_manifest(m.table, tmp_path / "copy.csv")
    again = load_manifest(tmp_path / "copy.csv", "mature5")
    pd.testing.assert_frame_equal(m.table, again.table)


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    from dorl.data.manifest import drop_unreadable

    path = _write(tmp_path, [{"path": "ok.png", "domain": "x", "label": "monocyte"},
                             {"path": "ok22.png", "domain": "x", "label": "monocyte"},
                             {"path": "bad.png", "domain": "x", "label": "basophil"}])
    m = load_manifest(path, "mature5")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    assert drop_unreadable(m, "error", tmp_path / "r.csv") is m
    kept = drop_unreadable(m, "skip", tmp_path / "r.csv")
    assert list(kept.table["path"]) == ["ok.png", "ok22.png"]
    report = pd.read_csv(tmp_path / "r.csv")
    assert report["path"].tolist() == ["bad.png"] and "cannot decode" in report["problem"][0]
    with pytest.raises(ManifestError, match="on_bad_image"):
        drop_unreadable(m, "ignore", tmp_path / "r.csv")
