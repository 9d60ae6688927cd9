"""Whole fields: the box files' readers, their refusals, white-cell detection on a composed
field, and the detection scores."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.fields.boxes import BoxFileError, read_boxes
from dorl.fields.detect import (DetectionSettings, candidate_map, component_areas, detect_cells,
                                learn_size_bounds)
from dorl.fields.metrics import box_iou, detection_scores, match_boxes

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
                 "<ymax>9</ymax></bndbox></object></annotation>", r"flat.xml: object 1's box is empty"),
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


def _field(rng, nuclei, size=200, lobed=True):
    """A pink field of red cells with dark purple nuclei at ``nuclei`` ((x, y, radius), ...),
    every second one two-lobed when ``lobed``; the true boxes are the nuclei's."""
    field = np.full((size, size, 3), (235, 215, 225), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(60):  # red cells
        cx, cy = rng.uniform(0, size, 2)
        field[(xx - cx) ** 2 + (yy - cy) ** 2 < 36] = (205, 140, 175)
    boxes = []
    for i, (cx, cy, r) in enumerate(nuclei):
        two = lobed and i % 2
        for lx, ly in [(cx - r / 2, cy), (cx + r / 2, cy)] if two else [(cx, cy)]:
            field[(xx - lx) ** 2 + (yy - ly) ** 2 < (r * 0.7 if two else r) ** 2] = (90, 8, 150)
        boxes.append((cx - r, cy - r, cx + r, cy + r))
    noise = rng.normal(0, 3, field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8), np.asarray(boxes, np.float64)


def test_detection_finds_the_nuclei_and_not_the_red_cells():
    rng = np.random.default_rng(0)
    fields = [_field(rng, [(50, 50, 8), (140, 60, 9), (100, 150, 8)]) for _ in range(3)]
    settings = DetectionSettings(margin=0.0)
    bounds = learn_size_bounds(np.concatenate(
        [component_areas(candidate_map(f, settings)) for f, _ in fields]))
    detected = [detect_cells(f, bounds, settings) for f, _ in fields]
    scores = detection_scores(detected, [b for _, b in fields])
    assert scores.recall == 1.0 and scores.precision == 1.0
    # A field without stained nuclei gives no box.
    blank = np.full((120, 120, 3), (235, 215, 225), np.uint8)
    assert detect_cells(blank, bounds, settings).shape == (0, 4)


def test_neighbouring_nuclei_are_split_into_one_box_each():
    """Two nuclei 3 px apart fall into one group (lobes join within a fifth of a nucleus's
    side); being nucleus-sized, each still gets its own box."""
    rng = np.random.default_rng(1)
    apart, _ = _field(rng, [(60, 60, 9), (140, 140, 9)], lobed=False)
    settings = DetectionSettings(margin=0.0)
    bounds = learn_size_bounds(component_areas(candidate_map(apart, settings)))
    touching, truth = _field(rng, [(80, 100, 9), (101, 100, 9)], lobed=False)
    found = detect_cells(touching, bounds, settings)
    assert len(found) == 2 and match_boxes(found, truth)[0] == 2


def test_box_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[5, 0, 15, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150], [0.0]])
    assert match_boxes(a, np.array([[0, 0, 10, 10], [0, 0, 9, 10]])) == (1, 1, 1)
    scores = detection_scores([a, np.zeros((0, 4))], [a[:1], b])
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 1, 1)
    assert scores.precision == scores.recall == scores.f1 == 0.5
