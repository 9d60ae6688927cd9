"""Dataset adapters on tiny fixtures that mimic each published layout, and on the real data."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dorl.data.manifest import load_manifest
from dorl.data.readers import LayoutError, build_manifest, read_source
from dorl.data.taxonomy import UNKNOWN


def _img(path, value=0, size=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    arr[0, 0] = value
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def acevedo(tmp_path):
    root = tmp_path / "PBC_dataset_normal_DIB"
    for folder, names in {"neutrophil": ["SNE_1", "BNE_2", "NEUTROPHIL_3"],
                          "ig": ["MY_4", "IG_5"], "lymphocyte": ["LY_6"],
                          "platelet": ["PLATELET_7"], "basophil": ["BA_8"]}.items():
        for name in names:
            _img(root / folder / f"{name}.jpg")
    return tmp_path


def test_acevedo_labels_from_prefix(acevedo):
    rows = read_source({"format": "acevedo20", "path": str(acevedo)})
    fine = dict(zip(rows["path"].map(lambda p: p.split("/")[-1]), rows["label_fine"]))
    assert fine["BNE_2.jpg"] == "neutrophil_banded"  # not relabelled by its folder
    assert fine["IG_5.jpg"] == "immature_granulocyte"
    assert (rows["domain"] == "acevedo20").all()


def test_matek_layout(tmp_path):
    for code in ("NGS", "MOB", "PMB"):
        _img(tmp_path / "AML-Cytomorphology_LMU" / code / f"{code}_0001.tiff")
    m, _ = build_manifest([{"format": "matek19", "path": str(tmp_path), "domain": "matek"}],
                          "dorl13", tmp_path / "m.csv")
    got = dict(zip(m.table["label_raw"], m.table["label"]))
    assert got == {"NGS": "neutrophil_segmented", "MOB": "monocyte", "PMB": UNKNOWN}


def test_zheng_layout_with_masks(tmp_path):
    folder = tmp_path / "Dataset 2"
    for i in (1, 2):
        _img(folder / f"{i:03d}.bmp")
        mask = np.zeros((24, 24), np.uint8)
        mask[4:20, 4:20] = 128
        Image.fromarray(mask).save(folder / f"{i:03d}.png")
    (tmp_path / "Class Labels of Dataset 2.csv").write_text("image ID,class\n1,2\n2,5\n")
    m, _ = build_manifest([{"format": "zheng2018", "path": str(tmp_path)}], "mature5",
                          tmp_path / "m.csv")
    assert list(m.table["label"]) == ["lymphocyte", "basophil"]
    assert m.mask_path(0).name == "001.png" and m.mask_path(0).is_file()


def test_zheng_missing_label_file(tmp_path):
    _img(tmp_path / "Dataset 1" / "001.bmp")
    with pytest.raises(LayoutError, match="Class Labels of Dataset 1.csv"):
        read_source({"format": "zheng2018", "path": str(tmp_path)})


def test_class_folders_with_aliases(tmp_path):
    for cls in ("Neutrophils", "lymph", "mixed", "Big_Eos"):
        _img(tmp_path / "lab" / cls / "0.png")
    rows = read_source({"format": "class_folders", "path": str(tmp_path / "lab"),
                        "aliases": {"Big_Eos": "eosinophil"}})
    got = dict(zip(rows["label_raw"], rows["label_fine"]))
    assert got == {"Neutrophils": "neutrophil", "lymph": "lymphocyte", "mixed": UNKNOWN,
                   "Big_Eos": "eosinophil"}
    assert (rows["domain"] == "lab").all()


def test_user_csv(tmp_path):
    for name in "abcd":
        _img(tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "cells.csv").write_text("path,label,domain\nimgs/a.png,Monocyte,site1\n"
                                        "imgs/b.png,eosinophil,site2\n"
                                        "imgs/c.png,basophil,site1\nimgs/d.png,basophil,site2\n")
    m, _ = build_manifest([{"format": "csv", "path": str(tmp_path / "cells.csv")}], "mature5",
                          tmp_path / "out" / "m.csv")
    assert sorted(m.table["label"]) == ["basophil", "basophil", "eosinophil", "monocyte"]
    assert m.image_path(0).is_file()  # paths re-based onto the manifest folder


@pytest.mark.parametrize("fmt", ["acevedo20", "matek19", "class_folders"])
def test_wrong_layouts_are_named(tmp_path, fmt):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="expected layout"):
        read_source({"format": fmt, "path": str(tmp_path / "empty")})
    with pytest.raises(LayoutError, match="not found"):
        read_source({"format": fmt, "path": str(tmp_path / "nope")})


def test_unknown_format():
    with pytest.raises(LayoutError, match="unknown format"):
        read_source({"format": "bccd", "path": "x"})


def test_duplicates_across_and_within_classes(tmp_path):
    root = tmp_path / "lab"
    src = _img(root / "neutrophil" / "a.png")
    (root / "neutrophil" / "copy.png").write_bytes(src.read_bytes())  # same label: keep one
    other = _img(root / "lymphocyte" / "x.png")
    (root / "monocyte").mkdir()
    (root / "monocyte" / "x.png").write_bytes(other.read_bytes())  # conflicting: drop both
    _img(root / "monocyte" / "ok.png")
    m, report = build_manifest([{"format": "class_folders", "path": str(root)}], "mature5",
                               tmp_path / "m.csv")
    assert len(report.dropped) == 1 and len(report.conflicting) == 2
    assert sorted(m.table["label"]) == ["monocyte", "neutrophil"]


@pytest.mark.realdata
def test_real_datasets(shared_datasets, tmp_path):
    sources = [
        {"format": "acevedo20", "path": str(shared_datasets / "acevedo20-subset")},
        {"format": "zheng2018", "path": str(shared_datasets / "zheng2018-cellavision")},
        {"format": "class_folders", "path": str(shared_datasets / "lisc-crops"), "domain": "lisc"},
    ]
    m, _ = build_manifest(sources, "mature5", tmp_path / "real.csv")
    counts = m.table.groupby("domain").size()
    assert counts["acevedo20"] == 3200 and counts["zheng2018"] == 100
    assert counts["lisc"] == 1323
    lisc = m.table[m.table.domain == "lisc"]
    assert (lisc.loc[lisc.label_raw == "mixed", "label"] == UNKNOWN).all()
    ace = m.table[m.table.domain == "acevedo20"]
    assert set(ace.loc[ace.label_raw == "BNE", "label"]) == {"neutrophil"}
    reloaded = load_manifest(tmp_path / "real.csv", "dorl13")
    ace13 = reloaded.table[reloaded.table.domain == "acevedo20"]
    assert set(ace13.loc[ace13.label_raw == "BNE", "label"]) == {"neutrophil_banded"}
    assert pd.notna(reloaded.signature())


def _zheng(root, header):
    folder = root / "Dataset 1"
    folder.mkdir(parents=True)
    for i in (1, 2):
        _img(folder / f"{i:03d}.bmp")
    (root / "Class Labels of Dataset 1.csv").write_text(f"{header}\n1,1\n2,3\n")


@pytest.mark.parametrize("header", ["image ID,class", "image ID,class label"])
def test_zheng2018_reads_both_official_label_headers(tmp_path, header):
    _zheng(tmp_path, header)
    rows = read_source({"format": "zheng2018", "path": str(tmp_path)})
    assert rows["label_fine"].str.startswith(("neutrophil", "monocyte")).all()
    assert len(rows) == 2


def _cli_manifest(tmp_path, source):
    """`dorl data manifest` on one source: (exit status, dorl.log text, manifest written?)."""
    import yaml

    from dorl.cli import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                   "data": {"root": str(tmp_path / "data"), "sources": [source]}}))
    code = main(["data", "manifest", "-c", str(cfg)])
    return code, (tmp_path / "run" / "dorl.log").read_text(), \
        (tmp_path / "data" / "manifest.csv").exists()


def test_bad_sources_exit_2_naming_the_file_and_write_nothing(tmp_path):
    # Acevedo-20 layout without Acevedo's file-name prefixes
    for cls in ("basophil", "monocyte"):
        _img(tmp_path / "ace" / "PBC_dataset_normal_DIB" / cls / f"img_{cls}.jpg")
    code, log, written = _cli_manifest(tmp_path / "a", {"format": "acevedo20",
                                                        "path": str(tmp_path / "ace")})
    assert code == 2 and not written and "PREFIX one of" in log and "img_basophil.jpg" in log
    # a CSV row whose absolute path does not exist: the CSV file and its line are named
    _img(tmp_path / "c" / "ok.png")
    (tmp_path / "c" / "cells.csv").write_text(
        "path,label,domain\nok.png,monocyte,s\n/nonexistent/x.png,basophil,s\n")
    code, log, written = _cli_manifest(tmp_path / "b", {"format": "csv",
                                                        "path": str(tmp_path / "c" / "cells.csv")})
    assert code == 2 and not written
    assert "cells.csv, line 3: path '/nonexistent/x.png' not found" in log
    # masks that are all background
    for name in ("p", "q"):
        _img(tmp_path / "m" / f"{name}.png")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "m" / f"{name}_mask.png")
    (tmp_path / "m" / "cells.csv").write_text(
        "path,label,domain,mask_path\np.png,monocyte,s,p_mask.png\nq.png,basophil,s,q_mask.png\n")
    code, log, written = _cli_manifest(tmp_path / "d", {"format": "csv",
                                                        "path": str(tmp_path / "m" / "cells.csv")})
    assert code == 2 and not written and "2 mask file(s) are all background" in log
