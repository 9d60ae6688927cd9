"""Benchmark of stage 1's autoencoder: domain invariance, class retention, time and memory.

Compares, on the same segmented cells, the raw pooled SAM encoder features (as they are and
standardised per domain, the label-free baseline the autoencoder must beat) with autoencoder
variants (``VARIANTS``): without alignment (``cae.loss.mmd=0``), with a plain decoder
(``cae.domain_code_dim=0``), on the crop alone (the default until input=both), with globally
instead of per-domain standardised SAM features, and the default:

* MMD^2 between domains and a domain classifier's accuracy (lower = more invariant),
* cross-domain macro-F1 of a logistic regression (higher = class information kept),
* in-domain macro-F1: 5-fold logistic regression within each domain, averaged (information kept
  at all),

plus the stage timings and the process's peak RSS. Each row of the printed table can be
reproduced with the command in the header.

Data (``--data``): ``real`` takes three labs from ../shared/datasets (Acevedo-20 subset, LISC
crops, Zheng-2018), ``synth`` the synthetic default (dorl/data/synth/generate.py). Segmentation
(``--segmentation``) comes from the LoRA-SAM stage, or from the label-free colour segmentation
of the pseudo-masks with pooled features of the pretrained LiteMedSAM encoder.

``--full`` instead times the whole ``make embed`` of the default config (needs every stage).

``--from-run runs/default`` reuses a finished run's manifest, segmentation and resolved config
(no SAM rerun; the variants are overrides of that run's config); ``--seeds`` repeats every
variant with several autoencoder seeds.

Examples
--------
OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed.py --from-run runs/default --seeds 0 1 2
OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed.py --data real --segmentation colour
OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed.py --full
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from measure import peak_rss_mib

from dorl.pipeline.embed import embed_segmentation, load_data, run_embed
from dorl.pipeline.invariance import domain_invariance
from dorl.config import load_config
from dorl.data.manifest import Manifest, load_manifest, subsample
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import read_features
from dorl.sam.segmentation import Segmentation

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
REAL_SOURCES = [
    {"format": "acevedo20", "path": str(DATASETS / "acevedo20-subset"), "domain": "acevedo20"},
    {"format": "class_folders", "path": str(DATASETS / "lisc-crops"), "domain": "lisc"},
    {"format": "zheng2018", "path": str(DATASETS / "zheng2018-cellavision"), "domain": "zheng2018"},
]
logger = logging.getLogger("bench_embed")


def real_manifest(out: Path, n_per_domain: int, seed: int) -> Manifest:
    """The three real labs, labelled mature5 cells only, at most ``n_per_domain`` each."""
    from dorl.data.readers import build_manifest

    manifest, _ = build_manifest(REAL_SOURCES, "mature5", out / "manifest.csv")
    table = subsample(manifest.table[manifest.table["label"] != "unknown"], n_per_domain,
                      ("domain",), seed)
    return Manifest(table, manifest.base_dir, "mature5")


def colour_segmentation(cfg, manifest: Manifest) -> Segmentation:
    """Stand-in for the LoRA-SAM stage: the label-free colour segmentation of
    :func:`dorl.sam.pseudo_masks.colour_mask` for the masks, the pretrained LiteMedSAM's pooled
    features (so "raw SAM" stays real SAM features)."""
    from dorl.data.images import read_rgb
    from dorl.resize import resize_image
    from dorl.sam.inference import SegmentSettings, segment_images
    from dorl.sam.models import sam_from_config
    from dorl.sam.pseudo_masks import colour_mask

    model, provenance = sam_from_config(cfg)
    images = [read_rgb(manifest.image_path(i)) for i in range(len(manifest))]
    masks = [colour_mask(resize_image(image, model.image_size)) for image in images]
    seg = segment_images(model.eval(), images, SegmentSettings.from_config(cfg), masks=masks)
    seg.meta = {**provenance, "signature": "colour-" + manifest.signature()}
    return seg


def segment(cfg, manifest: Manifest, how: str, cache: Path) -> tuple[Segmentation, str]:
    """The LoRA-SAM stage (``how="sam"``), else :func:`colour_segmentation` (cached in ``cache``
    for the same cells)."""
    if how == "sam":
        from dorl.sam.finetune import finetune_from_config
        from dorl.sam.inference import segment_from_config

        return segment_from_config(cfg, manifest, finetune_from_config(cfg, manifest)), "LoRA-SAM"
    how = "colour segmentation + LiteMedSAM features"
    if cache.is_file():
        seg = Segmentation.load(cache)
        if seg.meta.get("signature") == "colour-" + manifest.signature():
            return seg, how + " (cached)"
    seg = colour_segmentation(cfg, manifest)
    seg.save(cache)
    return seg, how


def in_domain_f1(X: np.ndarray, domains: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Mean over domains of the 5-fold macro-F1 of a logistic regression within the domain."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for d in np.unique(domains):
        sel = domains == d
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores.append(cross_val_score(clf, X[sel], labels[sel], cv=folds,
                                      scoring="f1_macro").mean())
    return float(np.mean(scores))


# The autoencoder variants compared (config overrides over the default config).
VARIANTS = {
    "cae_no_mmd": ["cae.loss.mmd=0"],
    "cae_mmd_plain_dec": ["cae.domain_code_dim=0"],
    "cae_crop_only": ["cae.input=crop", "cae.loss.feature=0"],
    "cae_global_norm": ["cae.feature_norm=global"],
    "cae_mmd": [],
}


def config_file(args: argparse.Namespace) -> Path:
    """The config every run of the comparison builds on: the ``--from-run`` run's resolved
    config, else the default config."""
    if args.from_run:
        return Path(args.from_run) / "config.embed.yaml"
    return REPO / "configs" / "default.yaml"


def cells(args: argparse.Namespace, base: list[str]) -> tuple[Manifest, Segmentation, str]:
    """The manifest and segmentation to compare on: a finished run's (``--from-run``), or made
    here from ``--data`` with ``--segmentation``."""
    out = Path(args.out)
    if args.from_run:
        run = Path(args.from_run)
        cfg = load_config(config_file(args), [])
        manifest = load_manifest(cfg.data.manifest, cfg.data.label_space, check_files=False)
        return manifest, Segmentation.load(run / "segmentation.h5"), f"cached in {run}"
    cfg = load_config(config_file(args), base)
    t0 = time.perf_counter()
    manifest = (real_manifest(out / "data", args.n_per_domain, args.seeds[0])
                if args.data == "real" else load_data(cfg))
    t1 = time.perf_counter()
    seg, how = segment(cfg, manifest, args.segmentation, out / "segmentation.h5")
    return manifest, seg, f"{how}; data {t1 - t0:.1f} s, segmentation " \
                          f"{time.perf_counter() - t1:.1f} s"


def compare(args: argparse.Namespace) -> None:
    """Raw SAM features vs the autoencoder variants, on the same cells, for each CAE seed."""
    out = Path(args.out)
    base = [f"run_dir={out}/sam", f"data.root={out}/data", f"seed={args.seeds[0]}"]
    base += args.overrides
    manifest, seg, how = cells(args, base)
    print(f"# {len(manifest)} cells, domains {manifest.table['domain'].value_counts().to_dict()}; "
          f"segmentation: {how}")
    domains = manifest.table["domain"].astype(str).to_numpy()
    labels = manifest.table["label"].astype(str).to_numpy()
    raw = np.asarray(seg.features["sam_pooled"], dtype=np.float32)
    rows, timing = [], []
    domain_std = DomainStandardScaler().fit_transform(raw, domains=domains)
    for name, X in (("raw_sam_pooled", raw), ("raw_sam_domain_std", domain_std)):
        rows.append({"features": name, "seed": "-",
                     **domain_invariance(X, domains, labels, args.seeds[0]),
                     "in_domain_f1": in_domain_f1(X, domains, labels, args.seeds[0])})
    for seed in args.seeds:
        for name in args.variants:
            vcfg = load_config(config_file(args), base + VARIANTS[name] + [
                f"seed={seed}", f"run_dir={out}/{name}_seed{seed}"])
            fs = read_features(embed_segmentation(vcfg, manifest, seg))
            rows.append({"features": name, "seed": seed, **fs.uns["invariance"]["embedding"],
                         "in_domain_f1": in_domain_f1(fs.X, domains, labels, seed)})
            t = fs.uns["timings_s"]
            timing.append(f"timing {name} seed {seed}: CAE training {t['cae_train']:.1f} s over "
                          f"{fs.uns['cae_training']['epochs_run']} epochs, encoding "
                          f"{t['cae_encode']:.1f} s")
    cmd = " ".join(["bench/bench_embed.py"] + sys.argv[1:])
    print(f"\n# reproduce: OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python {cmd}")
    print(f"{'features':<18} {'seed':>4} {'MMD^2':>8} {'domain acc':>11} {'chance':>7} "
          f"{'x-domain F1':>12} {'in-domain F1':>13}")
    for r in rows:
        print(f"{r['features']:<18} {r['seed']:>4} {r['mmd']:>8.4f} {r['domain_clf_acc']:>11.3f} "
              f"{r['domain_clf_chance']:>7.3f} {r['cross_domain_macro_f1']:>12.3f} "
              f"{r['in_domain_f1']:>13.3f}")
    print("\n".join(timing))
    print(f"peak RSS: {peak_rss_mib() / 1024:.2f} GB")


def full(args: argparse.Namespace) -> None:
    """Time the whole ``make embed`` with the default config (all stages)."""
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [f"run_dir={args.out}/full", f"data.root={args.out}/synth"] + args.overrides)
    t0 = time.perf_counter()
    fs = read_features(run_embed(cfg))
    total = time.perf_counter() - t0
    print(f"make embed (default config): {total:.1f} s total, "
          f"peak RSS {peak_rss_mib() / 1024:.2f} GB")
    for stage, seconds in fs.uns["timings_s"].items():
        print(f"  {stage}: {seconds:.1f} s")
    for name, r in fs.uns["invariance"].items():
        print(f"  {name}: MMD^2 {r['mmd']:.4f}, domain acc {r['domain_clf_acc']:.3f} (chance "
              f"{r['domain_clf_chance']:.3f}), cross-domain macro-F1 "
              f"{r['cross_domain_macro_f1']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["real", "synth"], default="synth")
    parser.add_argument("--n-per-domain", type=int, default=300)
    parser.add_argument("--segmentation", choices=["sam", "colour"], default="sam",
                        help="the LoRA-SAM stage, or the colour segmentation of "
                             "dorl.sam.pseudo_masks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of the autoencoder runs (the first also draws the data)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                        help="autoencoder variants to train (none: the raw SAM rows only)")
    parser.add_argument("--from-run", metavar="RUN_DIR",
                        help="compare on a finished `dorl embed` run's manifest and cached "
                             "segmentation (e.g. runs/default) instead of making them")
    parser.add_argument("--out", default="runs/bench_embed")
    parser.add_argument("--full", action="store_true", help="time the whole make embed instead")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every run (e.g. cae.epochs=5)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (full if args.full else compare)(args)


if __name__ == "__main__":
    main()
