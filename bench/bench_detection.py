"""White-cell detection in whole fields against their box files: precision, recall and F1 at
IoU >= 0.5, white cells per field, and seconds per megapixel, for each candidate map.

The pig fields of ``../shared/datasets/wbc-fields-pig`` (YOLO boxes): ``valid`` is the
development split (the settings were chosen on it), ``test`` the scoring split, read once
settings were fixed. Each split's size bounds are learnt from its own fields' candidates, no box
read (:func:`dorl.fields.detect.learn_size_bounds`).

    python bench/bench_detection.py [--root ../shared/datasets/wbc-fields-pig] [--split test]
    python bench/bench_detection.py --synthetic    # the synthetic labs' fields instead

``--synthetic`` composes 12 fields of 3 x 3 cells for each synthetic lab (:mod:`dorl.data.synth.
fields`, seed 0) and scores each lab against its true whole-cell boxes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dorl.data.images import read_rgb
from dorl.fields.boxes import read_boxes
from dorl.fields.detect import (CANDIDATE_MAPS, DetectionSettings, candidate_map,
                                component_areas, detect_cells, learn_size_bounds)
from dorl.fields.metrics import detection_scores

REPO = Path(__file__).resolve().parents[1]


def evaluate(fields: list[Path], settings: DetectionSettings, suffix: str = ".txt") -> dict:
    images = [read_rgb(f) for f in fields]
    truth = [read_boxes(f.parent.parent / "labels" / f"{f.stem}{suffix}", *im.shape[1::-1])[0]
             for f, im in zip(fields, images)]
    t0 = time.perf_counter()
    bounds = learn_size_bounds(np.concatenate(
        [component_areas(candidate_map(im, settings)) for im in images]))
    learn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    detected = [detect_cells(im, bounds, settings).boxes for im in images]
    detect_s = time.perf_counter() - t0
    scores = detection_scores(detected, truth)
    megapixels = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    counts = np.array([len(d) - len(t) for d, t in zip(detected, truth)])
    return {"fields": len(images), "cells": int(sum(len(t) for t in truth)),
            "precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
            "count_exact": float(np.mean(counts == 0)), "count_mae": float(np.abs(counts).mean()),
            "s_per_mpx": (learn_s + detect_s) / megapixels, "bounds": bounds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "datasets" / "wbc-fields-pig"))
    ap.add_argument("--split", nargs="+", default=["valid", "test"])
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args(argv)
    if args.synthetic:
        return synthetic()
    print("| split | candidate map | fields | white cells | precision | recall | F1 | "
          "count exact | count error | s / Mpx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for split in args.split:
        fields = sorted((Path(args.root) / split / "images").glob("*.jpg"))
        for candidates in CANDIDATE_MAPS:
            r = evaluate(fields, DetectionSettings(candidates=candidates))
            print(f"| {split} | {candidates} | {r['fields']} | {r['cells']} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                  f"{r['count_exact']:.0%} | {r['count_mae']:.2f} | {r['s_per_mpx']:.3f} |")
    return 0


def synthetic() -> int:
    import tempfile

    from dorl.config import package_defaults
    from dorl.data.synth.fields import compose_fields

    synth = package_defaults().data.synth
    labs = [str(d) for d in synth.domains]
    print("| lab | fields | white cells | precision | recall | F1 | s / Mpx |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        compose_fields(tmp, labs, 12, 3, int(synth.image_size), dict(synth.class_weights), 0)
        for lab in labs:
            fields = sorted((Path(tmp) / lab / "images").glob("*.png"))
            r = evaluate(fields, DetectionSettings(), suffix=".xml")
            print(f"| {lab} | {r['fields']} | {r['cells']} | {r['precision']:.3f} | "
                  f"{r['recall']:.3f} | {r['f1']:.3f} | {r['s_per_mpx']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
