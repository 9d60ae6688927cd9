"""Per-cell quality control on real labs: how many cells each check removes, and the SAM
predicted-IoU threshold chosen by the rule on the source's cells.

The rule (docs/reliability.md, written before this bench ran; source cells only): a check may
remove at most 1% of the labelled source cells. ``qc.min_predicted_iou`` is the largest multiple
of 0.05 that removes at most 1% of the source's cells. The other labs are reported and choose
nothing.

It segments the manifest that ``bench/bench_encoder_training.py`` (or ``bench_realdata.py``)
cached in its ``--out`` folder with that folder's LoRA adapter, into ``sam_lora/`` (reused when
the store matches):

    python bench/bench_quality.py --bench-dir runs/encoder_bench
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from dorl.config import load_config
from dorl.data.manifest import load_manifest
from dorl.sam.finetune import ADAPTER_DIR
from dorl.sam.inference import SegmentSettings, segment_from_config
from dorl.sam.quality import REASONS, QCSettings, cell_quality
from dorl.tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_quality")
SOURCE = "acevedo20"
#: The rule: a check removes at most this share of the source's labelled cells.
MAX_SOURCE_SHARE = 0.01
IOU_STEP = 0.05


def chosen_iou_threshold(source_iou: np.ndarray) -> float:
    """The largest multiple of :data:`IOU_STEP` below which at most :data:`MAX_SOURCE_SHARE`
    of ``source_iou`` lies."""
    steps = np.arange(0, 1, IOU_STEP)
    kept = [t for t in steps if np.mean(source_iou < t) <= MAX_SOURCE_SHARE]
    return float(round(max(kept), 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO / "runs" / "encoder_bench"))
    ap.add_argument("--config", default=str(REPO / "configs" / "realdata.yaml"))
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    bench = Path(args.bench_dir)
    cfg = load_config(args.config, [f"run_dir={bench / 'sam_lora'}",
                                    f"data.manifest={bench / 'manifest.csv'}", *args.overrides])
    manifest = load_manifest(cfg.data.manifest, cfg.data.label_space)
    adapter = bench / "sam_lora" / ADAPTER_DIR
    t0 = time.perf_counter()
    seg = segment_from_config(cfg, manifest, adapter if adapter.is_dir() else None,
                              SegmentSettings.from_config(cfg))
    seconds = time.perf_counter() - t0
    domains = manifest.table["domain"].astype(str).to_numpy()
    iou = np.asarray(seg.predicted_iou, np.float64)
    source = domains == SOURCE
    threshold = chosen_iou_threshold(iou[source & ~np.asarray(seg.fallback, bool)])
    settings = replace(QCSettings.from_config(cfg), min_predicted_iou=threshold)
    passed, reasons = cell_quality(manifest, seg, settings)
    rows = []
    for domain in np.unique(domains):
        own = domains == domain
        rows.append({"domain": domain, "cells": int(own.sum()),
                     "iou_p01": float(np.nanpercentile(iou[own], 1)),
                     "iou_median": float(np.nanmedian(iou[own])),
                     **{r: int((reasons[own] == r).sum()) for r in REASONS},
                     "removed": f"{100 * float((~passed[own]).mean()):.1f}%"})
    print(f"segmentation (or its reuse): {seconds:.0f} s for {len(manifest)} cells")
    print(f"rule: qc.min_predicted_iou = {threshold} (largest multiple of {IOU_STEP} removing at "
          f"most {MAX_SOURCE_SHARE:.0%} of {SOURCE}'s cells)")
    table = pd.DataFrame(rows)
    print(markdown_table(table.columns, [[f"{v:.3f}" if isinstance(v, float) else v for v in r]
                                         for r in table.itertuples(index=False)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
