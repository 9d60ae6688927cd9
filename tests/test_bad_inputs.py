"""The bad-input matrix of docs/reliability.md, through the command line.

Every case must end with exit status 2 and one log line that names the file (or the key) and the
problem, and must leave nothing half-written: the stage's product is absent and no temporary
file is left behind. The inputs that must keep working are at the end.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from dorl.cli import main
from dorl.data.images import read_rgb
from dorl.featstore import FeatureSet, write_features
from tests.helpers import dorl_records


def _png(path: Path, size=(24, 24), value=None, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16)).save(path)
    else:
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        if value is not None:
            arr[:] = value
        Image.fromarray(arr).convert(mode).save(path)
    return path


def _lab(folder: Path, n=4, classes=("monocyte", "basophil")) -> Path:
    for c in classes:
        for i in range(n):
            _png(folder / c / f"{c}_{i}.png")
    return folder


def _config(tmp: Path, sources=None, **keys) -> Path:
    cfg = {"run_dir": str(tmp / "run"), "data": {"root": str(tmp / "data")}}
    if sources is not None:
        cfg["data"]["sources"] = sources
    for key, value in keys.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _manifest_case(tmp: Path, sources) -> tuple[list[str], list[Path]]:
    return ["data", "manifest", "-c", str(_config(tmp, sources))], [tmp / "data" / "manifest.csv"]


def _csv_case(tmp: Path, text: str) -> tuple[list[str], list[Path]]:
    """`dorl data manifest` of a csv source ``tmp/c/cells.csv`` holding ``text``."""
    (tmp / "c").mkdir(parents=True, exist_ok=True)
    (tmp / "c" / "cells.csv").write_text(text)
    return _manifest_case(tmp, [{"format": "csv", "path": str(tmp / "c" / "cells.csv")}])


def _features(path: Path, n=40, dim=3, labels=("monocyte", "basophil")) -> Path:
    obs = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "domain": ["a", "b"] * (n // 2),
                        "label": [labels[(i // 2) % len(labels)] for i in range(n)]},
                       index=[str(i) for i in range(n)])
    X = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return write_features(path, FeatureSet(X, obs, {}, {"signature": {"data": "x"}}))


# --- dataset layouts and manifests: `dorl data manifest` -------------------------------------

def case_unknown_format(tmp):
    return _manifest_case(tmp, [{"format": "tiff_stack", "path": str(tmp)}]), "unknown format"


def case_missing_folder(tmp):
    return (_manifest_case(tmp, [{"format": "class_folders", "path": str(tmp / "nowhere")}]),
            r"folder not found: .*nowhere")


def case_empty_folder(tmp):
    (tmp / "empty" / "monocyte").mkdir(parents=True)
    return (_manifest_case(tmp, [{"format": "class_folders", "path": str(tmp / "empty")}]),
            r"no images in class folders under .*empty")


def case_unlabelled_folder_without_images(tmp):
    (tmp / "new").mkdir()
    (tmp / "new" / "notes.txt").write_text("x")
    return (_manifest_case(tmp, [{"format": "folder", "path": str(tmp / "new")}]),
            r"folder: no images under .*new")


def case_csv_file_missing(tmp):
    return (_manifest_case(tmp, [{"format": "csv", "path": str(tmp / "none.csv")}]),
            r"csv: file not found: .*none.csv")


def case_csv_without_path_column(tmp):
    return (_csv_case(tmp, "file,label,domain\na.png,monocyte,s\n"),
            r"cells.csv: missing column\(s\) \['path'\]")


def case_csv_without_label_column(tmp):
    return (_csv_case(tmp, "path,domain\na.png,s\n"),
            r"cells.csv: missing column\(s\) \['label'\]")


def case_csv_with_semicolons(tmp):
    return (_csv_case(tmp, "path;label;domain\na.png;monocyte;s\n"),
            r"cells.csv: missing column\(s\) \['label', 'path'\] \(its separator looks like ';'; "
            r"use commas\)")


def case_csv_without_domain(tmp):
    _png(tmp / "c" / "a.png")
    return (_csv_case(tmp, "path,label\na.png,monocyte\n"),
            r"cells.csv: no 'domain' column and no domain given")


def case_csv_absolute_path_missing(tmp):
    _png(tmp / "c" / "ok.png")
    return (_csv_case(tmp, "path,label,domain\nok.png,monocyte,s\n"
                           "/nonexistent/x.png,basophil,s\n"),
            r"cells.csv, line 3: path '/nonexistent/x.png' not found")


def case_csv_mask_missing(tmp):
    _png(tmp / "c" / "ok.png")
    return (_csv_case(tmp, "path,label,domain,mask_path\nok.png,monocyte,s,ok_mask.png\n"),
            r"cells.csv, line 2: mask_path 'ok_mask.png' not found")


def case_all_background_masks(tmp):
    for name in ("p", "q"):
        _png(tmp / "c" / f"{name}.png")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp / "c" / f"{name}_mask.png")
    return (_csv_case(tmp, "path,label,domain,mask_path\np.png,monocyte,s,p_mask.png\n"
                           "q.png,basophil,s,q_mask.png\n"),
            r"2 mask file\(s\) are all background.*p_mask.png")


def case_acevedo_without_prefixes(tmp):
    for cls in ("basophil", "monocyte"):
        _png(tmp / "ace" / "PBC_dataset_normal_DIB" / cls / f"img_{cls}.jpg")
    return (_manifest_case(tmp, [{"format": "acevedo20", "path": str(tmp / "ace")}]),
            r"PREFIX one of.*img_basophil.jpg")


def case_zheng_without_label_file(tmp):
    _png(tmp / "zheng" / "Dataset 1" / "001.bmp")
    return (_manifest_case(tmp, [{"format": "zheng2018", "path": str(tmp / "zheng")}]),
            r"zheng2018.*(label|Class Labels)")


def case_domain_with_one_cell(tmp):
    _lab(tmp / "a")
    _png(tmp / "b" / "monocyte" / "1.png")
    return (_manifest_case(tmp, [{"format": "class_folders", "path": str(tmp / "a"), "domain": "a"},
                                 {"format": "class_folders", "path": str(tmp / "b"),
                                  "domain": "b"}]),
            r"fewer than 2 cells.*'b': 1")


def case_domain_left_with_one_cell_after_dedup(tmp):
    _lab(tmp / "a")
    for i in (0, 1):  # lab b: byte-identical copies of lab a's cells, and one cell of its own
        target = tmp / "b" / "monocyte" / f"copy{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tmp / "a" / "monocyte" / f"monocyte_{i}.png").read_bytes())
    _png(tmp / "b" / "monocyte" / "own.png")
    return (_manifest_case(tmp, [{"format": "class_folders", "path": str(tmp / "a"), "domain": "a"},
                                 {"format": "class_folders", "path": str(tmp / "b"),
                                  "domain": "b"}]),
            r"fewer than 2 cells.*'b': 1")


def case_file_name_not_utf8(tmp):
    import os

    for lab in ("a", "b"):
        _lab(tmp / lab)
    bad = os.fsencode(tmp / "a" / "monocyte") + b"/cell_\xe9.png"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(bad)
    sources = [{"format": "class_folders", "path": str(tmp / lab), "domain": lab}
               for lab in ("a", "b")]
    return _manifest_case(tmp, sources), r"cell_\\xe9.png: the file name is not valid UTF-8"


def case_unknown_group_by(tmp):
    _lab(tmp / "a")
    return (_manifest_case(tmp, [{"format": "class_folders", "path": str(tmp / "a"),
                                  "group_by": "md5"}]),
            r"unknown group_by 'md5'")


# --- config --------------------------------------------------------------------------------

def case_unknown_config_key(tmp):
    return (["info", "-c", str(_config(tmp, cae__epoch=3))], []), r"epoch"


def case_config_yaml_alias_bomb(tmp):
    rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        rows.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    (tmp / "lol.yaml").write_text("\n".join(rows) + "\n")
    return (["info", "-c", str(tmp / "lol.yaml")], []), \
        r"cannot parse config file .*lol.yaml: .*expansion exceeds"


def case_removed_config_key(tmp):
    return (["info", f"run_dir={tmp / 'run'}", "sam.finetune.synth_images=4"], []), \
        r"command line: sam.finetune.synth_images was removed \(.*docs/removed.md\)"


def case_config_file_too_large(tmp):
    (tmp / "big.yaml").write_text("# padding\n" * 200_000)
    return (["info", "-c", str(tmp / "big.yaml")], []), \
        r"big.yaml: 2,000,000 bytes, more than a config file may hold"


def case_unknown_label_space(tmp):
    _lab(tmp / "a")
    argv = ["data", "manifest", "-c", str(_config(tmp, [{"format": "class_folders",
                                                         "path": str(tmp / "a")}],
                                                  data__label_space="dorl99"))]
    return (argv, [tmp / "data" / "manifest.csv"]), r"dorl99"


def case_manifest_file_missing(tmp):
    argv = ["sam", "eval", f"run_dir={tmp / 'run'}", f"data.manifest={tmp / 'none.csv'}"]
    return (argv, [tmp / "run" / "sam_eval"]), r"manifest not found: .*none.csv"


# --- images: `dorl embed` stops at the first unreadable image, naming it ---------------------

def _embed_case(tmp, tiny_cfg, bad_name, write_bad):
    for lab in ("a", "b"):
        _lab(tmp / "cells" / lab, n=3)
    write_bad(tmp / "cells" / "a" / "monocyte" / bad_name)
    sources = [{"format": "class_folders", "path": str(tmp / "cells" / lab), "domain": lab}
               for lab in ("a", "b")]
    cfg = OmegaConf.to_container(tiny_cfg, resolve=True)
    cfg["run_dir"] = str(tmp / "run")
    cfg["data"].update(root=str(tmp / "data"), manifest=str(tmp / "data" / "manifest.csv"),
                       sources=sources)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["embed", "-c", str(path)], [tmp / "run" / "features.h5ad",
                                        tmp / "run" / "segmentation.h5"]


def case_corrupt_image(tmp, tiny_cfg):
    return (_embed_case(tmp, tiny_cfg, "bad.png", lambda p: p.write_bytes(b"\x89PNG junk")),
            r"bad.png")


def case_truncated_image(tmp, tiny_cfg):
    def truncate(p):
        _png(p, size=(64, 64))
        p.write_bytes(p.read_bytes()[:120])
    return _embed_case(tmp, tiny_cfg, "cut.png", truncate), r"cut.png"


def case_empty_image_file(tmp, tiny_cfg):
    return _embed_case(tmp, tiny_cfg, "zero.png", lambda p: p.write_bytes(b"")), r"zero.png"


def case_tiny_image(tmp, tiny_cfg):
    return (_embed_case(tmp, tiny_cfg, "dot.png", lambda p: _png(p, size=(4, 4))),
            r"dot.png.*too small \(4x4\)")


def case_image_too_large(tmp, tiny_cfg):
    def huge(p):  # refused from its header, before decoding 200 MB of pixels
        Image.new("L", (8001, 8000)).save(p)
    return _embed_case(tmp, tiny_cfg, "huge.png", huge), r"huge.png.*8001x8000, larger than"


def case_tiff_declaring_a_huge_image(tmp, tiny_cfg):
    def huge(p):  # a 16x16 TIFF whose header says 30000x30000: refused before decoding
        import struct

        import tifffile

        tifffile.imwrite(p, np.zeros((16, 16, 3), np.uint8))
        with tifffile.TiffFile(p) as tif:
            tags = tif.pages[0].tags
            offsets = [tags[name].valueoffset for name in ("ImageWidth", "ImageLength")]
            kinds = [tags[name].dtype for name in ("ImageWidth", "ImageLength")]
        data = bytearray(p.read_bytes())
        for offset, kind in zip(offsets, kinds):
            fmt = "<H" if int(kind) == 3 else "<I"
            data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, 30000)
        p.write_bytes(bytes(data))
    return _embed_case(tmp, tiny_cfg, "huge.tif", huge), r"huge.tif.*30000x30000, larger than"


def case_feature_file_of_another_config(tmp, tiny_cfg):
    argv, forbidden = _embed_case(tmp, tiny_cfg, "fine.png", _png)
    stale = _features(tmp / "run" / "features.h5ad")
    return (argv, [tmp / "run" / "segmentation.h5"], stale), \
        r"features.h5ad was made by another config or dataset"


# --- classify, predict, apply ----------------------------------------------------------------

def case_classify_features_missing(tmp):
    argv = ["classify", "run", f"run_dir={tmp / 'run'}",
            f"classify.features={{dorl: {tmp / 'none.h5ad'}}}"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), r"none.h5ad"


def case_classify_own_features_missing_beside_the_users(tmp):
    path = _features(tmp / "mine.h5ad")
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", f"classify.features={{mine: {path}}}"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), \
        r"default entry 'dorl'.*classify.features.dorl=null"


def case_classify_source_left_with_too_few_cells_by_qc(tmp):
    path = tmp / "f.h5ad"
    obs = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "domain": ["a", "b"] * 20,
                        "label": [("monocyte", "basophil")[(i // 2) % 2] for i in range(40)],
                        "qc_pass": [i < 6 or i % 2 == 1 for i in range(40)]},
                       index=[str(i) for i in range(40)])
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    write_features(path, FeatureSet(X, obs, {}, {"signature": {"data": "x"}}))
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", f"classify.features={{dorl: {path}}}",
            "classify.classifiers=[logreg]"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), \
        r"domain 'a' has 3 labelled cell\(s\) left \(1 basophil, 2 monocyte\).*per-cell QC"


def case_unknown_classifier(tmp):
    path = _features(tmp / "f.h5ad")
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", "classify.classifiers=[forest]",
            f"classify.features={{dorl: {path}}}"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), r"unknown classifier 'forest'"


def case_unknown_adaptation(tmp):
    path = _features(tmp / "f.h5ad")
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", "classify.adaptations=[none,tent]",
            f"classify.features={{dorl: {path}}}"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), r"unknown \['tent'\]"


def case_feature_file_without_labels(tmp):
    path = _features(tmp / "f.h5ad", labels=("unknown",))
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", f"classify.features={{dorl: {path}}}"]
    return (argv, [tmp / "run" / "classify" / "results.csv"]), r"f.h5ad: no labelled cells"


def _target_labels_case(tmp, text: str):
    path = _features(tmp / "f.h5ad")
    (tmp / "labels.csv").write_text(text)
    argv = ["classify", "run", f"run_dir={tmp / 'run'}", f"classify.features={{dorl: {path}}}",
            f"classify.target_labels={tmp / 'labels.csv'}"]
    return argv, [tmp / "run" / "classify" / "results.csv"]


def case_target_label_outside_the_label_space(tmp):
    return (_target_labels_case(tmp, "path,label\n0.png,monocyte\n1.png,blast\n"),
            r"labels.csv: 1 row\(s\) give a label outside the label space, e.g. \['blast'\] "
            r"\(line 3\)")


def case_target_labels_disagree(tmp):
    return (_target_labels_case(tmp, "path,label\n0.png,monocyte\n0.png,basophil\n"),
            r"labels.csv: 1 cell\(s\) are given two different labels, e.g. '0.png'")


def case_target_labels_empty(tmp):
    return _target_labels_case(tmp, ""), r"labels.csv: empty file"


def case_target_labels_header_only(tmp):
    return _target_labels_case(tmp, "path,label\n"), r"labels.csv: no rows under the path,label"


def case_predict_model_missing(tmp):
    path = _features(tmp / "f.h5ad")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv"]), r"model file not found: .*m.skops"


def case_predict_not_a_model(tmp):
    path = _features(tmp / "f.h5ad")
    (tmp / "m.skops").write_text("not a model")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv"]), r"m.skops: not a dorl classify model"


class Payload:
    """A model that runs code when it is rebuilt: it writes the file it names."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("the payload ran")
        self.__dict__.update(state)

    def __reduce__(self):  # what a pickle-based loader would call
        return (Path(self.marker).write_text, ("the payload ran",))


def case_predict_pickled_payload(tmp):
    """A joblib (pickle) model whose payload would run on load, named as a model file."""
    import joblib

    path = _features(tmp / "f.h5ad")
    joblib.dump({"model": Payload(str(tmp / "ran.txt"))}, tmp / "m.skops")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv", tmp / "ran.txt"]), r"m.skops: not a dorl classify model"


def case_predict_untrusted_type(tmp):
    """A skops model that holds a type outside dorl's trusted list, whose rebuilding would run
    code: refused before anything is built."""
    import skops.io as sio

    path = _features(tmp / "f.h5ad")
    sio.dump({"model": Payload(str(tmp / "ran.txt")), "classes": ["monocyte"]}, tmp / "m.skops")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv", tmp / "ran.txt"]), \
        r"m.skops: refused, it holds types dorl does not trust: \['.*Payload'\]"


def case_predict_bundle_whose_model_is_a_string(tmp):
    import skops.io as sio

    path = _features(tmp / "f.h5ad")
    sio.dump({"model": "not a model", "classes": ["monocyte"], "feature_dim": 3,
              "feature_key": "X", "feature_signature": {}, "feature_file": "x"},
             tmp / "m.skops")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv"]), r"m.skops: not a dorl classify model \(its model is a str"


def case_predict_bundle_without_its_signature(tmp):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    path = _features(tmp / "f.h5ad")
    model = LogisticRegression().fit(np.eye(3), ["monocyte", "basophil", "monocyte"])
    sio.dump({"model": model, "classes": ["basophil", "monocyte"], "feature_dim": 3,
              "feature_key": "X", "feature_file": "x"}, tmp / "m.skops")
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv"]), \
        r"m.skops: not a dorl classify model \(no 'feature_signature'\)"


def case_predict_zip_bomb(tmp):
    """A small archive whose one member expands to 100 MB of zeros: refused from the zip
    directory, before skops reads it."""
    import zipfile

    path = _features(tmp / "f.h5ad")
    with zipfile.ZipFile(tmp / "m.skops", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("schema.json", "w") as member:
            for _ in range(100):
                member.write(bytes(1024 ** 2))
    argv = ["classify", "predict", f"run_dir={tmp / 'run'}", "--model", str(tmp / "m.skops"),
            "--features", str(path), "--out", str(tmp / "p.csv")]
    return (argv, [tmp / "p.csv"]), r"m.skops: refused, it would expand to 104,857,600 bytes"


def case_apply_from_unfinished_run(tmp):
    (tmp / "old").mkdir()
    argv = ["apply", "--from", str(tmp / "old"), f"run_dir={tmp / 'new'}"]
    return (argv, [tmp / "new" / "features.h5ad"]), r"old: no features.h5ad"


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.fixture
def logged_errors():
    """The ERROR records of the ``dorl`` loggers during the test."""
    with dorl_records(logging.ERROR) as records:
        yield records


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing_half(name, tmp_path, tiny_cfg,
                                                                 logged_errors):
    case = CASES[name]
    takes_cfg = case.__code__.co_argcount == 2
    setup, pattern = case(tmp_path, tiny_cfg) if takes_cfg else case(tmp_path)
    argv, forbidden, *kept = setup
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert main(argv) == 2
    errors = [r.getMessage() for r in logged_errors]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert re.search(pattern, errors[0]), errors[0]
    for path in forbidden:
        assert not Path(path).exists(), f"{path} was written"
    for path, mtime in before.items():  # a refused artifact is left as it was
        assert path.stat().st_mtime_ns == mtime
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_the_matrix_holds_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "16-bit", "spaces and non-ascii",
                                  "unknown label", "unlabelled folder"])
def test_inputs_that_keep_working(kind, tmp_path):
    folder = tmp_path / "lab"
    _lab(folder)
    names = {"grayscale": ("monocyte", "g.png", "L"), "rgba": ("monocyte", "a.png", "RGBA"),
             "16-bit": ("basophil", "w.png", "I;16"),
             "spaces and non-ascii": ("basophil", "cellule été 1.png", "RGB"),
             "unknown label": ("smudge", "s.png", "RGB"),
             "unlabelled folder": ("x", "u.png", "RGB")}
    cls, name, mode = names[kind]
    image = _png(folder / cls / name, mode=mode)
    fmt = "folder" if kind == "unlabelled folder" else "class_folders"
    sources = [{"format": fmt, "path": str(folder), "domain": "lab"},
               {"format": "class_folders", "path": str(_lab(tmp_path / "other")),
                "domain": "other"}]
    assert main(["data", "manifest", "-c", str(_config(tmp_path, sources))]) == 0
    table = pd.read_csv(tmp_path / "data" / "manifest.csv", keep_default_na=False)
    row = table[table["path"].str.endswith(name)]
    assert len(row) == 1
    if kind in ("unknown label", "unlabelled folder"):
        assert row["label"].item() == "unknown"
    rgb = read_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 24, 3)


@pytest.mark.parametrize("declared", [None, 4095])
def test_12_bit_camera_data_in_a_16_bit_tiff_reads_as_its_8_bit_twin(tmp_path, declared):
    import tifffile

    twin = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    twelve = (twin.astype(np.int64) * 4095 // 255).astype(np.uint16)
    tags = [] if declared is None else [(281, "H", 1, declared, True)]  # MaxSampleValue
    tifffile.imwrite(tmp_path / "cell.tif", twelve, extratags=tags)
    assert np.abs(read_rgb(tmp_path / "cell.tif").astype(int) - twin).max() <= 1
    # Full 16-bit data keeps its range.
    tifffile.imwrite(tmp_path / "full.tif", twin.astype(np.uint16) * 257)
    assert np.array_equal(read_rgb(tmp_path / "full.tif"), twin)
