"""Benchmark of ``make embed``: each stage's time, the autoencoder's epochs, the peak memory and
the embedding's domain-invariance figures, on the default config (synthetic labs).

``--n-per-domain`` scales the data to check that peak memory stays flat in the number of cells
(the crops stream from the segmentation and crop stores).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed.py
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed.py --n-per-domain 800
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from measure import peak_rss_mib

from dorl.config import load_config
from dorl.featstore import read_features
from dorl.pipeline.embed import run_embed

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_embed")
    parser.add_argument("--n-per-domain", type=int, default=None,
                        help="synthetic cells per lab (default: configs/default.yaml's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (e.g. cae.epochs=1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    size = [] if args.n_per_domain is None else [f"data.synth.n_per_domain={args.n_per_domain}"]
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [f"run_dir={args.out}/run", f"data.root={args.out}/synth", *size,
                       *args.overrides])
    t0 = time.perf_counter()
    fs = read_features(run_embed(cfg))
    total = time.perf_counter() - t0
    print(f"make embed (default config, {len(fs.obs)} cells): {total:.1f} s total, "
          f"peak RSS {peak_rss_mib() / 1024:.2f} GB")
    for stage, seconds in fs.uns["timings_s"].items():
        print(f"  {stage}: {seconds:.1f} s")
    training = fs.uns.get("cae_training")
    if training:
        print(f"  autoencoder: {int(training['epochs_run'])} epochs, final loss "
              f"{training['history']['total'][-1]:.4f}")
    for name, r in fs.uns["invariance"].items():
        print(f"  {name}: MMD^2 {r['mmd']:.4f}, domain acc {r['domain_clf_acc']:.3f} (chance "
              f"{r['domain_clf_chance']:.3f}), cross-domain macro-F1 "
              f"{r['cross_domain_macro_f1']:.3f}")


if __name__ == "__main__":
    main()
