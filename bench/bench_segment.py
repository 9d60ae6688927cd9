"""Segmentation benchmarks: throughput, and fine-tuning variants scored on proxies and Zheng-2018.

``throughput``: img/s of ``segment_images`` (encoder + decoder + mask cleaning + crops + pooled
features) against the bare encoder forward, same images, batch and size.
``finetune``: fine-tunes LoRA-SAM variants on Acevedo-20 pseudo-masks (no labels; LISC and
Zheng excluded unless a variant says otherwise) and scores each on five sets: held-out
Acevedo-20 pseudo-masks (as cropped and zoomed 2x), held-out LISC pseudo-masks and synthetic
cells with true masks (label-free proxies, to choose with) and the Zheng-2018 expert masks (to
report; never to choose with).

    .venv/bin/python bench/bench_segment.py throughput --size 128 --n 32
    .venv/bin/python bench/bench_segment.py finetune zero_shot: n48:sam.finetune.max_images=48 \
        n96:sam.finetune.max_images=96
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dorl.config import load_config
from dorl.data.manifest import load_manifest
from dorl.seeding import seed_everything

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"


def throughput(args) -> None:
    from dorl.sam.inference import SegmentSettings, segment_images
    from dorl.sam.models import build_sam

    cfg = load_config(None, [f"sam.image_size={args.size}", f"sam.infer.batch_size={args.batch}",
                             f"sam.infer.bf16={args.bf16}", f"sam.prompt={args.prompt}"])
    settings = SegmentSettings.from_config(cfg)
    model = build_sam(cfg.sam.backbone, "default", args.size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(args.n)]
    segment_images(model, images[:args.batch], settings, progress=False)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
        for i in range(0, args.n, args.batch):
            model.encode(model.preprocess(images[i:i + args.batch]))
    encoder = args.n / (time.perf_counter() - start)
    start = time.perf_counter()
    segment_images(model, images, settings, progress=False)
    full = args.n / (time.perf_counter() - start)
    print(json.dumps({"backbone": cfg.sam.backbone, "size": args.size, "batch": args.batch,
                      "bf16": args.bf16, "threads": torch.get_num_threads(),
                      "encoder_img_s": round(encoder, 3), "segment_img_s": round(full, 3)}))


PROXY_CELLS = 150
SYNTH_CELLS = 160
SYNTH_SEED = 12345  # not the config seed: these cells are never the ones trained on
# Labs crop cells at different magnifications: the held-out Acevedo-20 cells (about 0.1 of the
# crop) zoomed to about 0.4 of it are the label-free proxy for large cells.
ZOOM = 2.0


def zoomed(images: list[np.ndarray], masks: list[np.ndarray], size: int):
    """The images (resized to ``size``) and masks zoomed ``ZOOM`` x about their centres."""
    from dorl.resize import resize_image
    from dorl.sam.augment import augment_batch

    x = torch.from_numpy(np.stack([resize_image(image, size) for image in images]))
    x, m = augment_batch(x, torch.from_numpy(np.stack(masks)), {"scale": [ZOOM, ZOOM]},
                         torch.Generator())
    return list(x.numpy()), list(m.numpy())


def synthetic_cells(n: int, domains: list[str], size: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic white cells of the lab presets ``domains`` (taken in turn) at side
    ``size``, with their true whole-cell masks: uint8 (n, S, S, 3) and bool (n, S, S)."""
    from dorl.data.synth.cells import draw_cell
    from dorl.data.synth.domains import domain_style
    from dorl.data.taxonomy import MATURE5

    styles = [domain_style(d) for d in domains]
    images, masks = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, size, size), bool)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        cls = MATURE5[rng.integers(len(MATURE5))]
        images[i], truth = draw_cell(cls, styles[i % len(styles)], size, rng)
        masks[i] = truth > 0
    return images, masks


def evaluation_sets(out: Path, size: int, seed: int):
    """The fine-tuning manifest and the sets every variant is scored on.

    Acevedo-20 and LISC images (no labels) make the manifest, less 150 of each held out: their
    pseudo-masks that pass the checks are the label-free proxies, the Acevedo-20 ones also
    zoomed ``ZOOM`` x. Synthetic cells of the four lab presets carry true masks; Zheng-2018 (in
    the manifest, but excluded from training by every variant) carries the expert masks.
    """
    from dorl.data.images import read_cell_mask, read_rgb
    from dorl.data.readers import read_acevedo20, read_class_folders, read_zheng2018
    from dorl.data.synth.domains import PRESETS
    from dorl.resize import resize_mask
    from dorl.sam.pseudo_masks import bootstrap_pseudo_masks

    rng = np.random.default_rng(seed)
    parts, sets = [], {}
    for name, frame in (("acevedo20", read_acevedo20(DATA / "acevedo20-subset")),
                        ("lisc", read_class_folders(DATA / "lisc-crops", domain="lisc"))):
        order = rng.permutation(len(frame))
        parts.append(frame.iloc[order[PROXY_CELLS:]])
        images = [read_rgb(p) for p in frame["path"].iloc[order[:PROXY_CELLS]]]
        masks, _ = bootstrap_pseudo_masks(images, size)
        kept = [k for k, m in enumerate(masks) if m is not None]
        sets[f"{name} pseudo-masks"] = ([images[k] for k in kept], [masks[k] for k in kept])
        if name == "acevedo20":
            sets[f"{name} pseudo-masks, zoomed {ZOOM:g}x"] = zoomed(*sets[f"{name} pseudo-masks"],
                                                                   size)
    images, masks = synthetic_cells(SYNTH_CELLS, list(PRESETS), size, SYNTH_SEED)
    sets["synthetic, true masks"] = (list(images), list(masks))
    zheng = read_zheng2018(DATA / "zheng2018-cellavision")
    parts.append(zheng)
    sets["Zheng-2018 expert masks"] = ([read_rgb(p) for p in zheng["path"]],
                                       [resize_mask(read_cell_mask(p), size)
                                        for p in zheng["mask_path"]])
    table = pd.concat(parts, ignore_index=True)
    table["label"] = ""
    (out / "data").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "data" / "manifest.csv", index=False)
    return load_manifest(out / "data" / "manifest.csv", "mature5"), sets


def mask_scores(model, cfg, images: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """Mean Dice, 10th-percentile Dice, precision and recall of the model's cleaned masks
    (:func:`dorl.sam.metrics.mask_scores`)."""
    from dorl.sam.inference import predict_masks
    from dorl.sam.masks import clean_mask
    from dorl.sam.metrics import mask_scores as scores

    raw, _, _ = predict_masks(model, images, cfg.sam.prompt, float(cfg.sam.box_fraction),
                           int(cfg.sam.infer.batch_size), bool(cfg.sam.infer.bf16), "none")
    summary = scores([clean_mask(m) for m in raw], truths)
    return {k: summary[k] for k in ("dice", "dice_p10", "precision", "recall")}


def finetune_variants(args) -> None:
    """Fine-tune each variant (``name:key=value,...``; ``zero_shot``: none) and score it."""
    from dorl.sam.finetune import LOG_FILE, finetune_from_config
    from dorl.sam.inference import load_model

    out = Path(args.out)
    base = [f"sam.image_size={args.size}", "sam.finetune.exclude_domains=[lisc,zheng2018]"]
    cfg = load_config(None, base)
    manifest, sets = evaluation_sets(out, args.size, int(cfg.seed))
    rows = []
    for variant in args.variants:
        name, _, rest = variant.partition(":")
        overrides = [o for o in re.split(r",(?![^\[]*\])", rest) if o]  # not inside [...]
        cfg = load_config(None, [f"run_dir={out / name}", *base, *overrides])
        seed_everything(cfg.seed)
        start = time.perf_counter()
        adapter = None if name == "zero_shot" else finetune_from_config(cfg, manifest)
        seconds = time.perf_counter() - start
        model, _ = load_model(cfg, adapter)
        log = json.loads((adapter / LOG_FILE).read_text()) if adapter else {}
        for set_name, (images, truths) in sets.items():
            rows.append({"variant": name, "overrides": " ".join(overrides), "set": set_name,
                         "cells": len(images), "finetune_s": round(seconds, 1),
                         "train_masks": json.dumps(log.get("sources", {})),
                         **mask_scores(model, cfg, images, truths)})
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    table = pd.DataFrame(rows).pivot_table(index=["variant", "finetune_s"], columns="set",
                                           values="dice", sort=False)
    print(table.round(3).to_string())
    print(f"\nevery score: {out / 'results.csv'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--n", type=int, default=32)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--bf16", action="store_true")
    t.add_argument("--prompt", default="center_box")
    f = sub.add_parser("finetune", help="fine-tuning variants on label-free proxies and Zheng")
    f.add_argument("variants", nargs="+", help="name:key=value,key=value (zero_shot: no "
                   "fine-tuning); overrides of the package defaults")
    f.add_argument("--size", type=int, default=128)
    f.add_argument("--out", default="runs/bench_finetune")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    throughput(args) if args.what == "throughput" else finetune_variants(args)


if __name__ == "__main__":
    main()
