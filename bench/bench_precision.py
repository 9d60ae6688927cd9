"""How much the cell features move with bfloat16 and with torch's thread count.

`features.bf16: auto` computes the cell encoders in bfloat16 where the CPU has it natively
(AVX512-BF16/AMX) and in float32 elsewhere, and the number of threads sets the order of the
sums. This bench encodes the same real cells (``--per-domain`` of each lab, spread over the
manifest) in each precision with each thread count, then compares pairs of them: the mean
absolute difference of the per-domain standardised features, their cosine, and how many
predictions of a logistic regression trained on the source's cells (of the pair's first
member) stay the same on each lab.

It reads the manifest and LoRA-SAM segmentation that ``bench/bench_realdata.py`` or
``bench/bench_encoder_training.py`` cached in its ``--out`` folder:

    python bench/bench_precision.py --bench-dir runs/encoder_bench --threads 1 2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from dorl.config import load_config
from dorl.data.manifest import load_manifest
from dorl.domain_scaler import DomainStandardScaler
from dorl.features.encode import FeatureSettings, stream_cell_features
from dorl.sam.segmentation import Segmentation
from dorl.tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_precision")
SOURCE = "acevedo20"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", default=str(REPO / "runs" / "encoder_bench"),
                    help="a real-data bench's --out folder (manifest.csv, sam_lora/)")
    ap.add_argument("--config", default=str(REPO / "configs" / "realdata.yaml"))
    ap.add_argument("--per-domain", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bench = Path(args.bench_dir)
    cfg = load_config(args.config, ["device=cpu", *args.overrides])
    manifest = load_manifest(bench / "manifest.csv", str(cfg.data.label_space))
    seg = Segmentation.load(bench / "sam_lora" / "segmentation.h5", lazy=True)
    domains = manifest.table["domain"].astype(str).to_numpy()
    labels = manifest.table["label"].astype(str).to_numpy()
    rows = np.sort(np.concatenate([
        own[np.linspace(0, len(own) - 1, min(len(own), args.per_domain)).astype(int)]
        for own in (np.flatnonzero(domains == d) for d in np.unique(domains))]))
    dom, lab = domains[rows], labels[rows]

    configured = FeatureSettings.from_config(cfg)
    features, seconds = {}, {}
    for bf16, threads in itertools.product((True, False), args.threads):
        settings = replace(configured, bf16=bf16)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        feats, _ = stream_cell_features(manifest, seg, settings, rows)
        seconds[bf16, threads] = time.perf_counter() - t0
        X = np.concatenate([feats[e] for e in settings.encoders], axis=1)
        features[bf16, threads] = DomainStandardScaler().fit(X, domains=dom).transform(
            X, domains=dom)
        logger.info("bf16=%s, %d threads: %d cells in %.1f s", bf16, threads, len(rows),
                    seconds[bf16, threads])

    def name(key):
        return f"{'bfloat16' if key[0] else 'float32'}, {key[1]} thread(s)"

    most = max(args.threads)
    pairs = [((bf16, a), (bf16, b)) for bf16 in (True, False)
             for a, b in itertools.combinations(args.threads, 2)] + [((True, most), (False, most))]
    targets = [d for d in np.unique(dom) if d != SOURCE]
    header = ["pair", "mean abs diff", "cosine min", "cosine median",
              *[f"same prediction, {d}" for d in targets]]
    table = []
    for a, b in pairs:
        za, zb = features[a], features[b]
        cosine = (za * zb).sum(1) / (np.linalg.norm(za, axis=1) * np.linalg.norm(zb, axis=1))
        clf = LogisticRegression(max_iter=3000).fit(za[dom == SOURCE], lab[dom == SOURCE])
        table.append([f"{name(a)} vs {name(b)}", f"{np.abs(za - zb).mean():.3g}",
                      f"{cosine.min():.4f}", f"{np.median(cosine):.4f}",
                      *[f"{(clf.predict(za[dom == d]) == clf.predict(zb[dom == d])).mean():.3f}"
                        for d in targets]])
    print(f"{len(rows)} cells ({args.per_domain} per lab), logistic regression trained on "
          f"{SOURCE}'s cells of each pair's first member")
    print(markdown_table(header, table))
    print(markdown_table(["encoding", "seconds"],
                         [[name(k), f"{s:.1f}"] for k, s in seconds.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
