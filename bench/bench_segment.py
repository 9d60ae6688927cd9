"""Segmentation benchmarks: throughput, and Zheng-2018 Dice zero-shot vs fine-tuned.

``throughput``: img/s of ``segment_images`` (encoder + decoder + mask cleaning + crops + pooled
features) against the bare encoder forward, same images, batch and size.
``zheng``: fine-tunes LoRA-SAM on pseudo-masks from Acevedo-20 and LISC crops (no labels, no
Zheng image), then scores zero-shot and fine-tuned masks against the Zheng-2018 expert masks.

    .venv/bin/python bench/bench_segment.py throughput --size 128 --n 32
    .venv/bin/python bench/bench_segment.py zheng --size 128 --n-train 96 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dorl.config import load_config
from dorl.manifest import load_manifest
from dorl.seeding import seed_everything

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"


def throughput(args) -> None:
    from dorl.sam_models import build_sam
    from dorl.segment import segment_images

    cfg = load_config(None, [f"sam.image_size={args.size}", f"sam.infer.batch_size={args.batch}",
                             f"sam.infer.bf16={args.bf16}", f"sam.prompt={args.prompt}"])
    model = build_sam(cfg.sam.backbone, "default", args.size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(args.n)]
    segment_images(model, images[:args.batch], cfg, progress=False)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
        for i in range(0, args.n, args.batch):
            model.encode(model.preprocess(images[i:i + args.batch]))
    encoder = args.n / (time.perf_counter() - start)
    start = time.perf_counter()
    segment_images(model, images, cfg, progress=False)
    full = args.n / (time.perf_counter() - start)
    print(json.dumps({"backbone": cfg.sam.backbone, "size": args.size, "batch": args.batch,
                      "bf16": args.bf16, "threads": torch.get_num_threads(),
                      "encoder_img_s": round(encoder, 3), "segment_img_s": round(full, 3)}))


def _subset_manifest(out: Path, n_train: int, seed: int):
    """A CSV manifest: Acevedo-20 and LISC images (no masks; enough candidates for ``n_train``
    pseudo-masks) and all of Zheng-2018."""
    from dorl.adapters import read_acevedo20, read_class_folders, read_zheng2018
    from dorl.sam_finetune import PSEUDO_CANDIDATES

    rng = np.random.default_rng(seed)
    parts = []
    for frame in (read_acevedo20(DATA / "acevedo20-subset"),
                  read_class_folders(DATA / "lisc-crops", domain="lisc")):
        parts.append(frame.iloc[rng.choice(len(frame), PSEUDO_CANDIDATES * n_train // 2,
                                           replace=False)])
    parts.append(read_zheng2018(DATA / "zheng2018-cellavision"))
    table = pd.concat(parts, ignore_index=True)
    table["label"] = ""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "manifest.csv", index=False)
    return load_manifest(out / "manifest.csv", "mature5")


def zheng(args) -> None:
    from dorl.sam_eval import evaluate_from_config

    out = Path(args.out)
    cfg = load_config(None, [f"run_dir={out}", f"sam.image_size={args.size}",
                             f"sam.prompt={args.prompt}", f"sam.finetune.epochs={args.epochs}",
                             f"sam.finetune.max_images={args.n_train}",
                             "sam.finetune.exclude_domains=[zheng2018]",
                             f"sam.eval.max_images={args.n_eval}"])
    seed_everything(cfg.seed)
    manifest = _subset_manifest(out / "data", args.n_train, cfg.seed)
    start = time.perf_counter()
    report = evaluate_from_config(cfg, manifest)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1), **report}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--n", type=int, default=32)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--bf16", action="store_true")
    t.add_argument("--prompt", default="center_box")
    z = sub.add_parser("zheng")
    z.add_argument("--size", type=int, default=128)
    z.add_argument("--prompt", default="center_box")
    z.add_argument("--n-train", type=int, default=96)
    z.add_argument("--n-eval", type=int, default=100)
    z.add_argument("--epochs", type=int, default=2)
    z.add_argument("--out", default="runs/bench_zheng")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    throughput(args) if args.what == "throughput" else zheng(args)


if __name__ == "__main__":
    main()
