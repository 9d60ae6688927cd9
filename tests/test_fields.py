"""Whole fields: the box files' readers, their refusals, white-cell detection on a composed
field, and the detection scores."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from dorl.fields.boxes import BoxFileError, read_boxes
from dorl.fields.cells import read_fields
from dorl.fields.detect import (DetectionSettings, candidate_map, component_areas, detect_cells,
                                learn_size_bounds)
from dorl.fields.metrics import box_iou, detection_scores, match_boxes
from tests.helpers import dorl_records, draw_field


@contextmanager
def dorl_errors():
    with dorl_records(logging.ERROR) as records:
        messages = []
        yield messages
        messages += [r.getMessage() for r in records]

VOC = """<annotation><size><width>100</width><height>80</height></size>
<object><name>WBC</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>40</ymax>
</bndbox></object>
<object><name>WBC</name><bndbox><xmin>61</xmin><ymin>1</ymin><xmax>101</xmax><ymax>20</ymax>
</bndbox></object></annotation>"""


def test_yolo_and_voc_give_the_same_pixel_boxes(tmp_path):
    (tmp_path / "f.txt").write_text("0 0.2 0.375 0.2 0.25\n\n0 0.8 0.125 0.4 0.25")
    (tmp_path / "f.xml").write_text(VOC)
    yolo, yolo_labels = read_boxes(tmp_path / "f.txt", 100, 80)
    voc, voc_labels = read_boxes(tmp_path / "f.xml", 100, 80)
    np.testing.assert_allclose(yolo, [[10, 20, 30, 40], [60, 0, 100, 20]])
    np.testing.assert_allclose(voc, yolo)  # VOC's 1-based corners; 101 clipped to the field
    assert yolo_labels == ["0", "0"] and voc_labels == ["WBC", "WBC"]
    (tmp_path / "empty.txt").write_text("")
    assert read_boxes(tmp_path / "empty.txt", 100, 80)[0].shape == (0, 4)


@pytest.mark.parametrize("name, text, message", [
    ("short.txt", "0 0.5 0.5 0.1\n", r"short.txt, line 1: expected 'class x_centre"),
    ("words.txt", "0 a b c d\n", r"words.txt, line 1: expected"),
    ("pixels.txt", "0 50 40 10 10\n", r"pixels.txt, line 1: YOLO values are fractions"),
    ("broken.xml", "<annotation><object>", r"broken.xml: not a Pascal VOC xml file"),
    ("nobox.xml", "<annotation><object><name>x</name></object></annotation>",
     r"nobox.xml: object 1 has no numeric bndbox"),
    ("flat.xml", "<annotation><object><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax>"
                 "<ymax>9</ymax></bndbox></object></annotation>",
     r"flat.xml: object 1's box is empty"),
    ("boxes.json", "{}", r"boxes.json: unknown box file type"),
])
def test_malformed_box_files_are_refused_in_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(BoxFileError, match=message) as caught:
        read_boxes(tmp_path / name, 100, 80)
    assert "\n" not in str(caught.value)
    with pytest.raises(BoxFileError, match="box file not found"):
        read_boxes(tmp_path / "absent.txt", 100, 80)
    (tmp_path / "latin.txt").write_bytes(b"0 0.5 0.5 0.1 0.1 \xe9\n")
    with pytest.raises(BoxFileError, match="not a UTF-8 text file"):
        read_boxes(tmp_path / "latin.txt", 100, 80)


def test_detection_finds_the_nuclei_and_not_the_red_cells():
    rng = np.random.default_rng(0)
    fields = [draw_field(rng, [(50, 50, 8), (140, 60, 9), (100, 150, 8)]) for _ in range(3)]
    settings = DetectionSettings(margin=0.0)
    bounds = learn_size_bounds(np.concatenate(
        [component_areas(candidate_map(f, settings)) for f, _ in fields]))
    detected = [detect_cells(f, bounds, settings).boxes for f, _ in fields]
    scores = detection_scores(detected, [b for _, b in fields])
    assert scores.recall == 1.0 and scores.precision == 1.0
    # A field without stained nuclei gives no box.
    blank = np.full((120, 120, 3), (235, 215, 225), np.uint8)
    assert detect_cells(blank, bounds, settings).boxes.shape == (0, 4)


def test_neighbouring_nuclei_are_split_into_one_box_each():
    """Two nuclei 3 px apart fall into one group (lobes join within a fifth of a nucleus's
    side); being nucleus-sized, each still gets its own box."""
    rng = np.random.default_rng(1)
    apart, _ = draw_field(rng, [(60, 60, 9), (140, 140, 9)], lobed=False)
    settings = DetectionSettings(margin=0.0)
    bounds = learn_size_bounds(component_areas(candidate_map(apart, settings)))
    touching, truth = draw_field(rng, [(80, 100, 9), (101, 100, 9)], lobed=False)
    found, clumps = detect_cells(touching, bounds, settings)
    assert len(found) == 2 and match_boxes(found, truth)[0] == 2 and not clumps


def test_a_clump_of_forty_touching_nuclei_is_left_out_and_named(tmp_path):
    rng = np.random.default_rng(2)
    single, _ = draw_field(rng, [(60, 60, 9), (140, 140, 9), (60, 140, 9)], lobed=False)
    settings = DetectionSettings(margin=0.0)
    bounds = learn_size_bounds(component_areas(candidate_map(single, settings)))
    grid = [(30 + 17 * i, 50 + 17 * j, 9) for i in range(8) for j in range(5)]  # 40, touching
    clump, _ = draw_field(rng, [*grid, (170, 180, 9)], size=220, lobed=False)
    found, clumps = detect_cells(clump, bounds, settings)
    assert len(clumps) == 1 and 36 <= clumps[0][0] <= 44  # counted by stained area
    assert len(found) == 1  # only the lone nucleus
    # Read as a lab: the nucleus size is learnt from its fields, where the clump is rare.
    fields = tmp_path / "lab" / "images"
    fields.mkdir(parents=True)
    Image.fromarray(clump).save(fields / "clump.png")
    for k in range(6):
        Image.fromarray(draw_field(rng, [(60, 60, 9), (140, 140, 9), (60, 140, 9)],
                                   lobed=False)[0]).save(fields / f"single{k}.png")
    with dorl_records(logging.WARNING) as records:
        table = read_fields(fields, "lab", boxes="detect", cells_dir=tmp_path / "cells")
    lines = [r.getMessage() for r in records if "in one clump" in r.getMessage()]
    assert len(lines) == 1 and re.search(r"clump.png: about \d+ touching nuclei in one clump at "
                                         r"x \d+-\d+, y \d+-\d+, too dense", lines[0])
    assert len(table) == 6 * 3 + 1  # every single cell, and the clump's lone neighbour


def test_box_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[5, 0, 15, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150], [0.0]])
    assert match_boxes(a, np.array([[0, 0, 10, 10], [0, 0, 9, 10]])) == (1, 1, 1)
    scores = detection_scores([a, np.zeros((0, 4))], [a[:1], b])
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 1, 1)
    assert scores.precision == scores.recall == scores.f1 == 0.5


def _write_fields(root, lab, rng, n_fields=3, yolo=True):
    """Fields of one lab under ``root/lab/images`` with YOLO (or VOC) box files in
    ``root/lab/labels``; a second cell of the last field sits on its border."""
    from PIL import Image

    (root / lab / "images").mkdir(parents=True)
    (root / lab / "labels").mkdir(parents=True)
    for i in range(n_fields):
        nuclei = [(50, 60, 9), (140, 130, 8)] if i < n_fields - 1 else [(60, 60, 9), (191, 100, 9)]
        field, boxes = draw_field(rng, nuclei, lobed=False)
        Image.fromarray(field).save(root / lab / "images" / f"f{i}.png")
        size = field.shape[0]
        if yolo:
            lines = [f"0 {(b[0] + b[2]) / 2 / size} {(b[1] + b[3]) / 2 / size} "
                     f"{(b[2] - b[0]) / size} {(b[3] - b[1]) / size}" for b in boxes]
            (root / lab / "labels" / f"f{i}.txt").write_text("\n".join(lines))
        else:
            objects = "".join(f"<object><name>lymphocyte</name><bndbox><xmin>{b[0] + 1}</xmin>"
                              f"<ymin>{b[1] + 1}</ymin><xmax>{min(b[2], size)}</xmax>"
                              f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
            (root / lab / "labels" / f"f{i}.xml").write_text(f"<annotation>{objects}</annotation>")


@pytest.mark.parametrize("boxes", ["given", "detect"])
def test_a_fields_source_gives_one_manifest_row_per_cell_and_flags_the_edge(tmp_path, boxes):
    import pandas as pd
    import yaml

    from dorl.cli import main
    from dorl.data.manifest import load_manifest
    from dorl.sam.quality import at_field_edge

    rng = np.random.default_rng(0)
    _write_fields(tmp_path / "data", "lab_a", rng)
    _write_fields(tmp_path / "data", "lab_b", rng, yolo=False)
    sources = [{"format": "fields", "path": str(tmp_path / "data" / lab / "images"),
                "domain": lab, "boxes": boxes} for lab in ("lab_a", "lab_b")]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {
        "root": str(tmp_path / "data"), "manifest": str(tmp_path / "m" / "manifest.csv"),
        "sources": sources}}))
    assert main(["data", "manifest", "-c", str(config)]) == 0
    manifest = load_manifest(tmp_path / "m" / "manifest.csv", "mature5")
    table = manifest.table
    assert len(table) == 12 and set(table["domain"]) == {"lab_a", "lab_b"}
    assert (table["field"].str.startswith("../data/")).all()
    first = table[table["field"].str.endswith("lab_a/images/f0.png")]
    assert len(first) == 2 and all(manifest.image_path(i).is_file() for i in first.index)
    labels = table.groupby("domain")["label"].agg(set).to_dict()
    assert labels["lab_a"] == {"unknown"}  # YOLO class 0: a white cell, no subtype
    assert labels["lab_b"] == {"lymphocyte"}  # from the VOC names (matched by IoU under detect)
    edge = at_field_edge(manifest)
    assert edge.sum() == 2  # the cell on the last field's border, in each lab
    assert table.loc[edge, "field"].str.endswith("f2.png").all()
    crops = pd.read_csv(tmp_path / "m" / "manifest.csv", keep_default_na=False)["path"]
    assert crops.str.startswith("field_cells/").all()


def test_fields_refusals_are_one_line(tmp_path):
    from dorl.cli import main

    rng = np.random.default_rng(0)
    _write_fields(tmp_path / "data", "lab_a", rng)
    (tmp_path / "data" / "lab_a" / "labels" / "f1.txt").unlink()
    (tmp_path / "data" / "lab_a" / "labels" / "f2.txt").write_text("0 0.5 0.5 0.1\n")

    def manifest(**source):
        source = {"format": "fields", "path": str(tmp_path / "data" / "lab_a" / "images"),
                  "domain": "lab_a", **source}
        return main(["data", "manifest", f"run_dir={tmp_path / 'run'}",
                     f"data.manifest={tmp_path / 'm.csv'}",
                     f"data.sources=[{{format: {source['format']}, path: '{source['path']}', "
                     f"domain: {source['domain']}, boxes: {source.get('boxes', 'given')}}}]"])

    with dorl_errors() as errors:
        assert manifest() == 2
        assert manifest(boxes="guess") == 2
    assert re.search(r"f1.png: no box file", errors[0])
    assert "boxes must be one of ['given', 'detect']" in errors[1]
    assert not (tmp_path / "m.csv").exists()


def test_predict_writes_each_cells_field_and_box_and_a_differential_count(tiny_cfg, tmp_path):
    import pandas as pd

    from dorl.classify.predict import predict_file
    from dorl.classify.run import classify_from_config
    from dorl.featstore import FeatureSet, read_features, write_features
    from tests.helpers import synthetic_features

    fs = read_features(synthetic_features(tmp_path / "cells.h5ad", n_per_domain=60))
    obs = fs.obs.copy()
    obs["field"] = [f"fields/f{i // 6}.png" for i in range(len(obs))]  # six cells a field
    obs["box"] = "1.0 2.0 30.0 31.0"
    obs["qc_pass"] = [i % 6 != 5 for i in range(len(obs))]  # one cut by the edge a field
    obs["qc_reason"] = np.where(obs["qc_pass"], "", "edge")
    path = write_features(tmp_path / "fields.h5ad", FeatureSet(fs.X, obs, {}, fs.uns))
    tiny_cfg.classify.features = {"dorl": str(path)}
    tiny_cfg.classify.classifiers = ["logreg"]
    tiny_cfg.classify.adaptations = ["none"]
    tiny_cfg.classify.protocols = ["source_target"]
    tiny_cfg.classify.n_jobs = 1
    tiny_cfg.classify.out_dir = str(tmp_path / "classify")
    model = classify_from_config(tiny_cfg) / "models" / "dorl__logreg.skops"
    predict_file(model, path, tmp_path / "p.csv")
    rows = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert {"field", "box", "predicted", "qc_reason"} <= set(rows.columns)
    counts = pd.read_csv(tmp_path / "p.counts.csv", index_col="field")
    assert len(counts) == len(obs) // 6 and (counts["total"] == 5).all()  # QC-passing cells
    passed = rows[rows["qc_pass"]]
    expected = pd.crosstab(passed["field"], passed["predicted"])
    pd.testing.assert_frame_equal(counts.drop(columns="total"), expected, check_names=False)


def test_synthetic_fields_hold_their_cells_boxes_and_classes(tmp_path):
    from dorl.data.synth.fields import compose_fields

    weights = {"neutrophil": 0.5, "lymphocyte": 0.5}
    n = compose_fields(tmp_path, ["lab_a", "lab_b"], 2, 2, 64, weights, seed=0)
    assert n == 2 * 2 * 4
    fields = sorted((tmp_path / "lab_a" / "images").glob("*.png"))
    assert [f.name for f in fields] == ["field_000.png", "field_001.png"]
    boxes, labels = read_boxes(tmp_path / "lab_a" / "labels" / "field_000.xml", 128, 128)
    assert boxes.shape == (4, 4) and set(labels) <= set(weights)
    # Each box lies inside its own tile of the 2 x 2 mosaic.
    tiles = (boxes[:, :2] // 64).astype(int)
    assert sorted(map(tuple, tiles)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    again = tmp_path / "again"
    compose_fields(again, ["lab_a", "lab_b"], 2, 2, 64, weights, seed=0)
    assert (again / "lab_a" / "images" / "field_001.png").read_bytes() == \
        (tmp_path / "lab_a" / "images" / "field_001.png").read_bytes()
