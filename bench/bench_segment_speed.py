"""Segmentation of real cells before and after the speed work of 2026-12-07, in one run: cells/s
of ``segment_images`` (encoder, decoder, mask cleaning, crops) and the Dice of the new masks
against the old ones.

"Before" is the written-out window attention (``reference_attention.py``) at the old default
batch of 16 images; "after" is the library as it stands, at ``sam.infer.batch_size``. Both run
in float32 (as on CPUs without native bfloat16) on the same cells, round after round, so that
the machine's drift falls on both.

    python bench/bench_segment_speed.py --manifest runs/encoder_bench_s/manifest.csv \\
        --adapter runs/encoder_bench_s/sam_lora/sam_adapter
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from reference_attention import written_out_attention

from dorl.config import load_config
from dorl.data.images import read_rgb
from dorl.data.manifest import load_manifest
from dorl.sam.inference import SegmentSettings, load_model, segment_images
from dorl.sam.metrics import dice


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True, help="a manifest CSV of single-cell images")
    ap.add_argument("--label-space", default="mature5")
    ap.add_argument("--adapter", help="a LoRA adapter folder (sam_lora/sam_adapter of a run)")
    ap.add_argument("--per-domain", type=int, default=48, help="cells of each domain")
    ap.add_argument("--before-batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["sam.infer.bf16=false"])
    manifest = load_manifest(args.manifest, args.label_space)
    domains = manifest.table["domain"].to_numpy()
    rows = np.concatenate([np.flatnonzero(domains == d)[:args.per_domain]
                           for d in manifest.domains])
    images = [read_rgb(manifest.image_path(i)) for i in rows]
    model, _ = load_model(cfg, Path(args.adapter) if args.adapter else None)
    after = SegmentSettings.from_config(cfg)
    before = replace(after, batch_size=args.before_batch)
    print(f"{len(images)} cells of {list(manifest.domains)}, float32, {args.threads} threads; "
          f"before: written-out attention, batch {before.batch_size}; after: batch "
          f"{after.batch_size}")
    rates = {"before": [], "after": []}
    for round_ in range(args.rounds):
        t0 = time.perf_counter()
        with written_out_attention():
            old = segment_images(model, images, before, progress=False)
        rates["before"].append(len(images) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        new = segment_images(model, images, after, progress=False)
        rates["after"].append(len(images) / (time.perf_counter() - t0))
        scores = [dice(a, b) for a, b in zip(new.masks, old.masks) if a.any() or b.any()]
        print(f"round {round_}: before {rates['before'][-1]:.2f} cells/s, after "
              f"{rates['after'][-1]:.2f} cells/s ({rates['after'][-1] / rates['before'][-1]:.2f}x);"
              f" Dice of the new masks against the old: min {min(scores):.4f}, mean "
              f"{np.mean(scores):.5f}; centre-crop fallbacks {int(new.fallback.sum())} against "
              f"{int(old.fallback.sum())}", flush=True)
    print(f"best of {args.rounds}: before {max(rates['before']):.2f}, after "
          f"{max(rates['after']):.2f} cells/s ({max(rates['after']) / max(rates['before']):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
