"""Proof on real data: every method on the same cells, cross-domain scores, segmentation, speed.

Source: the Acevedo-20 subset (labelled). Targets: LISC crops and Zheng-2018 CellaVision, whose
labels are used only to score. Label space mature5; ``unknown`` cells (Acevedo's immature
granulocytes, erythroblasts and platelets, LISC's ``mixed``) are left out. A class with fewer
than ``classify.min_class_count`` cells in a target is left out of that target's score.

Methods, measured in one run on the same cells:
  colour+texture, pixels+PCA          hand-crafted baselines (bench/baselines.py)
  SAM frozen                          pooled encoder features of zero-shot SAM (no LoRA)
  LoRA-SAM                            pooled encoder features after LoRA fine-tuning
  LoRA-SAM domain-std                 the same, standardised per domain (label-free baseline)
  --feature-options                   the pretrained cell encoders' options (features.*), and
                                      the label-free rule that chose among them

The cross-domain autoencoder, which trains the cell encoder, has its own bench with every loss
term as a row: bench/bench_encoder_training.py.

SAM segmentation runs ONCE per model (zero-shot, fine-tuned) and is reused by every seed, and by
later runs into the same ``--out`` (cached with the LoRA adapter); the seeds vary the
classifiers and the pixel PCA. The bare encoder forward pass is timed on
``ENCODER_TIMING_CELLS`` cells as the reference for segmentation throughput. Nothing is tuned
on target labels: every setting comes from the config and every classifier is reported. SAM is
fine-tuned on source cells only (never on the Zheng masks it is scored on).

    python bench/bench_realdata.py --quick                  # small subset, 1 seed
    python bench/bench_realdata.py --max-per-class 60 --seeds 0 1 2 \
        "classify.classifiers=[logreg,svm_rbf,knn,mlp,rf]"  # the run in docs/benchmarks.md
    python bench/bench_realdata.py --baselines-only         # no SAM
    python bench/bench_realdata.py --render-only --out DIR  # rewrite DIR/results.md

Writes ``results.json``, ``results.md`` (docs-ready tables) and ``bench.log`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import umap
from cnn_comparator import CNNSettings, cnn_predictions
from feature_options import (
    OPTIONS,
    crop_set,
    option_features,
    shifted_source_scores,
)
from measure import Stopwatch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dorl.atomic import atomic_path, write_text_atomic
from dorl.classify.adaptation import ADAPTATIONS
from baselines import colour_texture_features, pixel_pca_features
from dorl.classify.inputs import FeatureInput
from dorl.classify.run import run_classification
from dorl.classify.scoring import kept_classes, score
from dorl.classify.settings import ClassifySettings
from dorl.config import load_config
from dorl.data.images import read_cell_mask, read_rgb
from dorl.data.manifest import Manifest, load_manifest, save_manifest, subsample
from dorl.data.readers import build_manifest
from dorl.data.taxonomy import UNKNOWN
from dorl.device import resolve_bf16
from dorl.domain_scaler import DomainStandardScaler
from dorl.pipeline.invariance import domain_invariance
from dorl.resize import resize_mask
from dorl.sam.metrics import mask_scores
from dorl.seeding import seed_everything
from simulated_labs import LAB_COLUMNS, held_out_labs
from selection_rule import choose_adaptation, choose_default

logger = logging.getLogger("bench_realdata")
REPO = Path(__file__).resolve().parents[1]
SOURCE = "acevedo20"
CNN_METHOD = "supervised CNN (source labels)"
QUICK = ["classify.classifiers=[logreg,knn,rf,svm_rbf]",
         "sam.finetune.epochs=1", "sam.finetune.max_images=32"]
# Source cells per class the cell-feature selection rule scores (bench/feature_options.py).
SELECTION_PER_CLASS = 100
# Cells (spread over the bench cells) on which the bare encoder forward pass is timed.
ENCODER_TIMING_CELLS = 64
def subsample_manifest(cfg, out: Path, max_per_class: int) -> Manifest:
    """Index the configured sources, drop ``unknown`` cells, keep <= max_per_class per (domain,
    label) chosen with the config seed, and save the bench manifest."""
    sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
    full, _ = build_manifest(sources, cfg.data.label_space, out / "manifest_full.csv")
    table = subsample(full.table[full.table["label"] != UNKNOWN], max_per_class,
                      ("domain", "label"), int(cfg.seed))
    groups = table.groupby("domain")["group"].nunique()
    logger.info("near-duplicate groups among the kept cells: %s (cells: %s)", groups.to_dict(),
                table["domain"].value_counts().to_dict())
    save_manifest(table, out / "manifest.csv")
    return load_manifest(out / "manifest.csv", cfg.data.label_space)


def score_methods(features: dict[str, np.ndarray], table: pd.DataFrame, cfg, seed: int,
                  out: Path, adaptation: str = "none") -> tuple[list[dict], pd.DataFrame]:
    """Score every method's features with the classify stage itself (``source_target`` and
    ``in_domain`` protocols, the source lab's folds as the only training sets, the classify
    stage's ``adaptation`` for every classifier), so the bench and ``dorl classify run`` give
    the same numbers for the same cells and classifier.

    Each cell of the table is the mean over the source's 5 fold models of the macro-F1 and
    accuracy on the classes shared by source and target (target classes with fewer than
    ``classify.min_class_count`` cells left out); ``<source> (5-fold)`` is the held-out fold.
    Returns the rows and the fit timings.
    """
    domains, labels = table["domain"].to_numpy(), table["label"].to_numpy()
    inputs = [FeatureInput(name, out, "X", X, labels, domains, None)
              for name, X in features.items()]
    settings = replace(ClassifySettings.from_config(cfg), protocols=("source_target",
                                                                      "in_domain"),
                       n_folds=5, seeds=(seed,), sources=(SOURCE,), save_models=False,
                       max_train_cells=None, adaptations=(adaptation,),
                       adaptation_classifiers=None)
    results, _, timings = run_classification(inputs, settings, out)
    # The targets' own in-lab k-folds (the classify stage's ceiling rows) are not this table's.
    shared = results[(results["scope"] == "shared") & (results["label"] == "")
                     & results["metric"].isin(["macro_f1", "accuracy"])
                     & ((results["protocol"] != "in_domain") | (results["target"] == SOURCE))]
    cells = shared.pivot_table(index=["feature_set", "classifier", "protocol", "target", "fold"],
                               columns="metric", values="value").reset_index()
    n_test = shared[shared["metric"] == "accuracy"].groupby(
        ["feature_set", "classifier", "protocol", "target"])["n_test"].sum()
    kept = {t: sorted(set(kept_classes(labels[domains == t], int(cfg.classify.min_class_count)))
                      & set(labels[domains == SOURCE])) for t in np.unique(domains)}
    rows = []
    for (method, clf, protocol, target), g in cells.groupby(
            ["feature_set", "classifier", "protocol", "target"]):
        in_domain = protocol == "in_domain"
        rows.append({"method": method, "classifier": clf, "seed": seed,
                     "target": f"{SOURCE} (5-fold)" if in_domain else target,
                     "macro_f1": g["macro_f1"].mean(), "accuracy": g["accuracy"].mean(),
                     "classes": ",".join(kept[target]),
                     "n_test": int(n_test[(method, clf, protocol, target)]) if in_domain
                     else int(np.isin(labels[domains == target], kept[target]).sum())})
    return rows, timings


def cnn_rows(crops: np.ndarray, masks: np.ndarray, table: pd.DataFrame, cfg, seed: int,
             watch: Stopwatch) -> list[dict]:
    """Rows of the supervised CNN comparator (bench/cnn_comparator.py) for one seed, scored by
    the classify stage's own metric code on the classes :func:`score_methods` keeps."""
    domains, labels = table["domain"].to_numpy(), table["label"].to_numpy()
    predictions, seconds, n_train = cnn_predictions(crops, masks, labels, domains, SOURCE, seed,
                                                    CNNSettings())
    watch.record(f"supervised CNN training (seed {seed}, {CNNSettings().epochs} epochs)",
                 n_train * CNNSettings().epochs, seconds)
    rows = []
    for target, (cells, pred) in predictions.items():
        kept = sorted(set(kept_classes(labels[domains == target],
                                       int(cfg.classify.min_class_count)))
                      & set(labels[domains == SOURCE]))
        scored = {(r["metric"]): r["value"] for r in score(labels[cells], pred,
                                                           set(labels[domains == SOURCE]), kept)
                  if r["scope"] == "shared" and r["label"] == ""}
        rows.append({"method": CNN_METHOD, "classifier": "cnn", "seed": seed,
                     "target": f"{SOURCE} (5-fold)" if target == SOURCE else target,
                     "macro_f1": scored["macro_f1"], "accuracy": scored["accuracy"],
                     "classes": ",".join(kept),
                     "n_test": int(np.isin(labels[cells], kept).sum())})
    return rows


def segmentation_quality(seg, manifest: Manifest) -> dict:
    """Mean Dice/IoU/precision/recall of the SAM masks against every ground-truth mask in the
    manifest, and, per domain, the mean mask area (fraction of SAM's input image, all cells)
    and the centre-crop fallback rate."""
    domains = manifest.table["domain"].to_numpy()
    area = np.asarray(seg.masks, dtype=bool).mean(axis=(1, 2))
    fallback = np.asarray(seg.fallback, dtype=bool)
    per_domain = {d: {"cells": int((domains == d).sum()),
                      "mask_area": float(area[domains == d].mean()),
                      "fallback_rate": float(fallback[domains == d].mean())}
                  for d in manifest.domains}
    preds, truths = [], []
    for i in range(len(manifest)):
        mask_path = manifest.mask_path(i)
        if mask_path is None:
            continue
        preds.append(np.asarray(seg.masks[i], dtype=bool))
        truths.append(resize_mask(read_cell_mask(mask_path), preds[-1].shape[0]))
    if not preds:
        return {"per_domain": per_domain}
    return {**mask_scores(preds, truths), "true_mask_area": float(np.mean(truths)),
            "per_domain": per_domain}


def encoder_throughput(cfg, images: list[np.ndarray], watch: Stopwatch) -> float:
    """Time the bare SAM encoder forward pass (preprocess + encode, no decoder, no LoRA) over
    ``images`` with segmentation's batch size and precision (``sam.infer.batch_size``,
    ``sam.infer.bf16``): the reference for segmentation throughput. Returns images/s."""
    from dorl.sam.inference import load_model

    model, _ = load_model(cfg, None)
    batch = int(cfg.sam.infer.batch_size)
    device = model.pixel_mean.device
    bf16 = resolve_bf16(cfg.sam.infer.bf16, device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.encode(model.preprocess(images[:batch]))  # warm-up
        with watch.time("bare SAM encoder forward", len(images)):
            for start in tqdm(range(0, len(images), batch), desc="bare encoder", unit="batch"):
                model.encode(model.preprocess(images[start:start + batch]))
    return watch.rows[-1]["images_per_s"]


def rows_of(manifest: Manifest, keep: np.ndarray) -> Manifest:
    """The manifest restricted to the rows where ``keep`` is True."""
    return Manifest(manifest.table[keep].reset_index(drop=True), manifest.base_dir,
                    manifest.label_space)


@contextlib.contextmanager
def timed_unless_cached(watch: Stopwatch, stage: str, n_images: int, product: Path):
    """Time a stage that may reload ``product`` from a cache; the row says which it was."""
    t0 = time.time()
    with watch.time(stage, n_images):
        yield
    if not (product.is_file() and product.stat().st_mtime >= t0):
        watch.rows[-1]["stage"] += " [cache reload, not a timing]"


def sam_stages(cfg, manifest: Manifest, out: Path, watch: Stopwatch, zero_shot: bool = True):
    """Zero-shot SAM segmentation of every cell (unless ``zero_shot`` is False), LoRA
    fine-tuning on source cells only, and LoRA-SAM segmentation of every cell; each is cached in
    ``out`` and reused by later runs with the same data, settings and adapter.

    Returns
    -------
    seg_zs, seg_ft : Segmentation
        Zero-shot (None when skipped) and LoRA-SAM segmentations, rows aligned with
        ``manifest``.
    adapter : Path or None
    quality : dict
        Dice/IoU against the ground-truth masks (Zheng) of each segmentation.
    """
    from dorl.sam.finetune import ADAPTER_DIR, SIGNATURE_FILE, finetune_from_config
    from dorl.sam.inference import SEGMENTATION_FILE, SegmentSettings, segment_from_config

    table = manifest.table
    zs_dir, ft_dir = out / "sam_zeroshot", out / "sam_lora"
    seg_zs = None
    if zero_shot:
        with timed_unless_cached(watch, "segmentation + features, zero-shot SAM", len(manifest),
                                 zs_dir / SEGMENTATION_FILE):
            seg_zs = segment_from_config(OmegaConf.merge(cfg, {"run_dir": str(zs_dir)}),
                                         manifest, None, SegmentSettings.from_config(cfg))
    ft_cfg = OmegaConf.merge(cfg, {"run_dir": str(ft_dir)})
    source = rows_of(manifest, (table["domain"] == SOURCE).to_numpy())
    seen = min(len(source), int(cfg.sam.finetune.max_images)) * int(cfg.sam.finetune.epochs)
    adapter_sig = ft_dir / ADAPTER_DIR / SIGNATURE_FILE
    with timed_unless_cached(watch, "LoRA fine-tuning (source cells only; max_images x epochs)",
                             seen, adapter_sig):
        adapter = finetune_from_config(ft_cfg, source)
    if adapter is None:
        logger.warning("no LoRA adapter was trained: the 'LoRA-SAM' rows use zero-shot SAM")
        watch.rows[-1]["stage"] += ": no training masks, nothing trained"
    with timed_unless_cached(watch, "segmentation + features, LoRA-SAM", len(manifest),
                             ft_dir / SEGMENTATION_FILE):
        seg_ft = segment_from_config(ft_cfg, manifest, adapter,
                                     SegmentSettings.from_config(ft_cfg))
    quality = {"LoRA fine-tuned": segmentation_quality(seg_ft, manifest)}
    if seg_zs is not None:
        quality = {"zero-shot": segmentation_quality(seg_zs, manifest), **quality}
    return seg_zs, seg_ft, adapter, quality


def feature_rows(cfg, manifest: Manifest, seg, args, per_seed: dict, watch: Stopwatch,
                 out: Path) -> tuple[str, dict]:
    """Add one row per ``--feature-options`` option to ``per_seed`` and choose among them by the
    label-free rule of `bench/selection_rule.py`. Returns the chosen option and a dict with the
    ``selection`` table (records) and the chosen adaptation with its table (records)."""
    from dorl.features.crops import cell_crops
    from dorl.features.encode import FeatureSettings
    from dorl.features.resolution import coarsest_side, native_crop_sides

    table = manifest.table
    domains = table["domain"].astype(str).to_numpy()
    src = domains == SOURCE
    base = FeatureSettings.from_config(cfg)
    with watch.time("cell crops at native resolution (LoRA-SAM masks)", len(manifest)):
        crops, masks = cell_crops(manifest, seg, base.crop_size)
    sides = native_crop_sides(manifest, seg)
    logger.info("median native crop side per domain (px): %s", {
        d: round(float(np.median(sides[domains == d])), 1) for d in np.unique(domains)})
    crop_sets = {"native": crops}

    def crops_at(resolution: str) -> np.ndarray:
        """The cell crops as ``features.resolution`` = ``resolution`` cuts them (cut once)."""
        if resolution not in crop_sets:
            side = coarsest_side(sides, domains)
            with watch.time(f"cell crops through at most {side} px ({resolution} resolution)",
                            len(manifest)):
                crop_sets[resolution] = cell_crops(manifest, seg, base.crop_size,
                                                   max_side=side)[0]
        return crop_sets[resolution]
    # The selection rule's source cells: the first SELECTION_PER_CLASS of each class; its
    # held-out labs take the others, each in a blood smear's class mix.
    rank = table[src].groupby("label").cumcount().to_numpy()
    sel = np.flatnonzero(src)[rank < SELECTION_PER_CLASS]
    rest = np.flatnonzero(src)[rank >= SELECTION_PER_CLASS]
    held_out = held_out_labs(crops[rest], masks[rest], sides[rest],
                             table["label"].to_numpy()[rest], int(cfg.classify.min_class_count)
                             ) if len(rest) else {}
    for lab, cells in held_out.items():
        logger.info("the rule's %s: %s", lab, pd.Series(cells.labels).value_counts().to_dict())
    cache: dict = {}
    selection = []
    schedule = ClassifySettings.from_config(cfg).self_training
    for name in args.feature_options:
        option_crops = crops_at(OPTIONS[name].resolution)
        X, seconds = option_features(name, option_crops, masks, domains, base, int(cfg.seed),
                                     cache, crop_set("cells", OPTIONS[name]))
        watch.record(f"cell features: {name} (stain + encoders)", len(manifest), seconds)
        for seed in args.seeds:
            per_seed[seed][name] = X
            selection.append(shifted_source_scores(
                name, crops[sel], masks[sel], sides[sel], table["label"].to_numpy()[sel],
                base, list(cfg.classify.classifiers), seed, cache, tuple(args.adaptations),
                schedule, held_out,
                OmegaConf.to_container(cfg.classify.params, resolve=True)))
    selection = pd.concat(selection, ignore_index=True)
    with atomic_path(out / "selection.csv") as tmp:
        selection.to_csv(tmp, index=False)
    chosen, summary = choose_default(selection, list(OPTIONS))
    logger.info("feature options by the selection rule (chosen: %s):\n%s", chosen,
                summary.to_string())
    adaptation, adaptations = choose_adaptation(selection, chosen, tuple(args.adaptations))
    logger.info("adaptations of %s by the selection rule (chosen: %s):\n%s", chosen,
                adaptation, adaptations.to_string())
    return chosen, {"selection": summary.to_dict("records"),
                    "adaptation": adaptation, "adaptations": adaptations.to_dict("records")}


def summarise(scores: pd.DataFrame, invariance: pd.DataFrame) -> pd.DataFrame:
    """Per method and target, mean ± std over seeds of: the macro-F1 of the classifier that scores
    best in-domain (chosen on source labels only: an honest choice), the best and the mean
    macro-F1/accuracy over classifiers (the best is picked on target labels: an optimistic
    bound, not an achievable score); with the invariance figures alongside."""
    in_domain = scores[scores["target"].str.endswith("(5-fold)")]
    chosen = in_domain.loc[in_domain.groupby(["method", "seed"])["macro_f1"].idxmax(),
                           ["method", "seed", "classifier"]]
    picked = scores.merge(chosen, on=["method", "seed", "classifier"])
    per_seed = scores.groupby(["method", "target", "seed"]).agg(
        best_f1=("macro_f1", "max"), mean_f1=("macro_f1", "mean"),
        best_acc=("accuracy", "max"), mean_acc=("accuracy", "mean"))
    per_seed["chosen_f1"] = picked.set_index(["method", "target", "seed"])["macro_f1"]
    agg = per_seed.groupby(["method", "target"]).agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    names = chosen.groupby("method")["classifier"].agg(lambda c: "/".join(sorted(set(c))))
    agg["chosen_classifier"] = agg.index.get_level_values("method").map(names)
    inv = invariance.groupby("method")[["mmd", "domain_clf_acc"]].mean()
    return agg.reset_index().merge(inv.reset_index(), on="method", how="left")


def markdown(summary: pd.DataFrame, seg_quality: dict, speed: pd.DataFrame, meta: dict) -> str:
    """Docs-ready markdown of the three result tables."""
    def pm(row, key):
        std = row[f"{key}_std"]
        return f"{row[f'{key}_mean']:.3f} ± {0.0 if np.isnan(std) else std:.3f}"

    load = (f"{meta['load_average_start'][0]:.1f}/{meta['load_average_end'][0]:.1f}"
            if "load_average_end" in meta else "not recorded")
    lines = [f"Cells: {meta['cells']}. Seeds: {meta['seeds']}. Classifiers: "
             f"{', '.join(meta['classifiers'])}. 1-min load average at start/end: {load} "
             f"({os.cpu_count()} CPUs).", "",
             "| method | target | macro-F1, source-chosen clf. | best macro-F1 (oracle) | "
             "mean macro-F1 | best acc. | mean acc. | MMD² | domain clf. acc. |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(meta["methods"])}
    summary = summary.sort_values(["target", "method"], key=lambda s: s.map(order)
                                  if s.name == "method" else s)
    for _, r in summary.iterrows():
        lines.append(f"| {r['method']} | {r['target']} | {pm(r, 'chosen_f1')} "
                     f"({r['chosen_classifier']}) | {pm(r, 'best_f1')} | {pm(r, 'mean_f1')}"
                     f" | {pm(r, 'best_acc')} | {pm(r, 'mean_acc')} | "
                     + ("– | – |" if np.isnan(r["mmd"]) else
                        f"{r['mmd']:.4f} | {r['domain_clf_acc']:.3f} |"))
    def labs(r) -> str:
        """The per-lab columns of a rule's row (runs before Run I recorded none)."""
        return " | ".join(f"{r.get(c, np.nan):.3f}" for c in LAB_COLUMNS)

    if meta.get("adaptations"):
        lines += ["", f"Target adaptations of the chosen option by the label-free rule "
                      f"(docs/benchmarks.md, Runs G, J and L); chosen: "
                      f"**{meta['chosen_adaptation']}**.",
                  "", "| adaptation | classifier (best in-domain) | in-domain macro-F1 | "
                  "colour, blur, zoom labs | low-resolution lab | differential lab | "
                  "paediatric lab | shifted-source, all labs |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in meta["adaptations"]:
            lines.append(f"| {r['adaptation']} | {r['classifier']} | {r['in_domain_f1']:.3f} | "
                         f"{labs(r)} | {r['shifted_f1']:.3f} |")
    if meta.get("selection"):
        lines += ["", f"Cell-feature options by the label-free selection rule "
                      f"(bench/feature_options.py); chosen: **{meta['chosen_option']}**.", "",
                  "| option | classifier (best in-domain) | in-domain macro-F1 | "
                  "colour, blur, zoom labs | low-resolution lab | differential lab | "
                  "paediatric lab | shifted-source, all labs | selection score |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in meta["selection"]:
            lines.append(f"| {r['option']} | {r['classifier']} | {r['in_domain_f1']:.3f} | "
                         f"{labs(r)} | {r['shifted_f1']:.3f} | {r['score']:.3f} |")
    if seg_quality:
        lines += ["", "| SAM | cells with GT mask | Dice | IoU | precision | recall |",
                  "|---|---|---|---|---|---|"]
        for name, q in seg_quality.items():
            if "dice" in q:
                lines.append(f"| {name} | {q['n']} | {q['dice']:.3f} ± {q['dice_std']:.3f} | "
                             f"{q['iou']:.3f} | {q['precision']:.3f} | {q['recall']:.3f} |")
        lines += ["", "| SAM | domain | cells | mean mask area (fraction of image) | "
                      "fallback rate |", "|---|---|---|---|---|"]
        for name, q in seg_quality.items():
            for domain, d in q["per_domain"].items():
                lines.append(f"| {name} | {domain} | {d['cells']} | {d['mask_area']:.3f} | "
                             f"{d['fallback_rate']:.3f} |")
        truth = next((q for q in seg_quality.values() if "true_mask_area" in q), None)
        if truth is not None:
            lines += ["", f"The ground-truth whole-cell masks cover {truth['true_mask_area']:.3f} "
                          f"of the image on average ({truth['n']} cells)."]
    lines += ["", "| stage | images | seconds | images/s | peak RSS (MiB) |",
              "|---|---|---|---|---|"]
    for _, r in speed.iterrows():
        lines.append(f"| {r['stage']} | {r['images']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    if "encoder_ratio" in meta:
        lines += ["", f"Segmentation throughput / bare encoder forward throughput: "
                      f"{meta['encoder_ratio']:.2f} (encoder alone: "
                      f"{meta['encoder_img_s']:.2f} img/s at {meta['sam_image_size']} px)."]
    return "\n".join(lines) + "\n"


def render(out: Path) -> int:
    """Rewrite ``out/results.md`` (and the summary in ``results.json``) from a finished run."""
    result = json.loads((out / "results.json").read_text())
    invariance = pd.DataFrame(result["summary"])[["method", "mmd", "domain_clf_acc"]]
    summary = summarise(pd.read_csv(out / "scores.csv"), invariance.drop_duplicates("method"))
    result["summary"] = summary.to_dict("records")
    write_text_atomic(out / "results.json", json.dumps(result, indent=2, default=float))
    text = markdown(summary, result["segmentation"], pd.DataFrame(result["speed"]),
                    result["meta"])
    write_text_atomic(out / "results.md", text)
    print(text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "realdata.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "realdata_bench"))
    ap.add_argument("--max-per-class", type=int, default=100,
                    help="cells kept per (domain, class), chosen with the config seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="classifier / PCA seeds (default 0 1 2; 0 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="10 cells per class, 4 classifiers, short SAM training")
    ap.add_argument("--baselines-only", action="store_true", help="skip SAM")
    ap.add_argument("--feature-options", nargs="*", choices=list(OPTIONS), default=[],
                    metavar="OPTION", help=f"cell-feature options to add as rows, chosen between "
                    f"by the label-free rule of bench/feature_options.py: {list(OPTIONS)}")
    ap.add_argument("--skip-zero-shot", action="store_true",
                    help="skip zero-shot SAM segmentation and its 'SAM frozen' row (one SAM "
                         "pass over every cell less)")
    ap.add_argument("--adaptations", nargs="+",
                    choices=[a for a in ADAPTATIONS if a not in ("domain_std", "coral")],
                    default=["none"], metavar="ADAPTATION",
                    help="target adaptations scored by the selection rule on the simulated labs, "
                         "cheapest first (needs --feature-options); each one after `none` adds "
                         "a row of the chosen option with that adaptation")
    ap.add_argument("--cnn", action="store_true",
                    help="add the supervised CNN comparator (bench/cnn_comparator.py), one "
                         "training per seed on the LoRA-SAM cell crops")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite results.md from the scores.csv and results.json in --out")
    args = ap.parse_args(argv)
    if args.render_only:
        return render(Path(args.out))
    if args.quick:
        args.max_per_class = min(args.max_per_class, 10)
    # `none` comes first: its rows hold every classifier, which the rules choose among.
    args.adaptations = ["none", *dict.fromkeys(a for a in args.adaptations if a != "none")]
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr),
                                  logging.FileHandler(out / "bench.log")])
    cfg = load_config(args.config, (QUICK if args.quick else []) + list(args.overrides))
    cfg.data.manifest = str(out / "manifest.csv")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(int(cfg.seed))
    watch = Stopwatch()

    manifest = subsample_manifest(cfg, out, args.max_per_class)
    table = manifest.table
    logger.info("bench cells:\n%s", manifest.summary().to_string())
    n = len(manifest)
    with watch.time("read images", n):
        images = [read_rgb(manifest.image_path(i)) for i in range(n)]
    with watch.time("baseline colour+texture", n):
        colour = colour_texture_features(images)
    src = (table["domain"] == SOURCE).to_numpy()
    per_seed = {}
    for seed in args.seeds:
        with watch.time(f"baseline pixels+PCA (seed {seed})", n):
            per_seed[seed] = {"colour+texture": colour,
                              "pixels+PCA": pixel_pca_features(images, 50, seed, fit_mask=src)}
    per_domain = ", ".join(f"{d}: {c}" for d, c in table["domain"].value_counts().items())
    meta = {"cells": f"{n} ({per_domain})",
            "seeds": args.seeds, "classifiers": list(cfg.classify.classifiers),
            "sam_image_size": int(cfg.sam.image_size), "load_average_start": os.getloadavg()}
    seg_quality = {}
    # Rows of the chosen feature option with a target adaptation: name -> (option, adaptation).
    adapted_rows = {}
    if not args.baselines_only:
        seg_zs, seg_ft, adapter, seg_quality = sam_stages(cfg, manifest, out, watch,
                                                          not args.skip_zero_shot)
        timing_images = images[:: max(1, n // ENCODER_TIMING_CELLS)][:ENCODER_TIMING_CELLS]
        meta["encoder_img_s"] = encoder_throughput(cfg, timing_images, watch)
        meta["adapter"] = str(adapter)
        seg_row = next(r for r in watch.rows if r["stage"].startswith("segmentation + features, "
                                                                      "LoRA-SAM"))
        if "cache reload" not in seg_row["stage"]:
            meta["encoder_ratio"] = seg_row["images_per_s"] / meta["encoder_img_s"]
        for seed in args.seeds:
            if seg_zs is not None:
                per_seed[seed]["SAM frozen"] = seg_zs.features["sam_pooled"]
            per_seed[seed]["LoRA-SAM"] = seg_ft.features["sam_pooled"]
            per_seed[seed]["LoRA-SAM domain-std"] = DomainStandardScaler().fit_transform(
                seg_ft.features["sam_pooled"], domains=table["domain"].to_numpy())
        if args.feature_options:
            chosen, cell = feature_rows(cfg, manifest, seg_ft, args, per_seed, watch, out)
            meta["selection"] = cell["selection"]
            meta["chosen_option"] = chosen
            meta["adaptations"] = cell["adaptations"]
            meta["chosen_adaptation"] = cell["adaptation"]
            adapted_rows = {f"{chosen}, {a}": (chosen, a) for a in args.adaptations[1:]}
    meta["methods"] = list(per_seed[args.seeds[0]]) + list(adapted_rows)

    scores, invariance = [], []
    for seed in args.seeds:
        logger.info("scoring %d methods (seed %d)", len(per_seed[seed]), seed)
        rows, timings = score_methods(per_seed[seed], table, cfg, seed, out / "classify")
        scores += rows
        plain_last = list(per_seed[seed])[-1]
        if seed == args.seeds[0]:
            last = timings[timings["feature_set"] == plain_last]
            for clf, fits in last.groupby("classifier"):
                watch.record(f"classifier {clf} (5 source folds, {plain_last})",
                             int(fits["n_train"].sum()), float(fits["fit_s"].sum()))
        for name, (option, adaptation) in adapted_rows.items():
            adapted, timings = score_methods({option: per_seed[seed][option]}, table, cfg, seed,
                                             out / "classify", adaptation)
            scores += [{**r, "method": name} for r in adapted]
            if seed == args.seeds[0]:
                watch.record(f"fits with {adaptation}, every classifier (5 source folds, "
                             f"{option})", int(timings["n_train"].sum()),
                             float(timings["fit_s"].sum()))
        for method, X in per_seed[seed].items():
            inv = domain_invariance(X, table["domain"], table["label"], seed)
            for name in [method] + [a for a, (o, _) in adapted_rows.items() if o == method]:
                invariance.append({"method": name, "seed": seed, "mmd": inv["mmd"],
                                   "domain_clf_acc": inv["domain_clf_acc"]})
    X_last = per_seed[args.seeds[0]][plain_last]
    umap.UMAP(n_neighbors=5, random_state=0).fit_transform(X_last[:60])  # numba JIT warm-up
    with watch.time(f"UMAP ({plain_last})", n):
        umap.UMAP(n_neighbors=int(cfg.umap.n_neighbors), random_state=int(cfg.seed)
                  ).fit_transform(X_last)

    if args.cnn and not args.baselines_only:
        from dorl.features.crops import cell_crops

        with watch.time("cell crops for the CNN (LoRA-SAM masks)", n):
            crops, masks = cell_crops(manifest, seg_ft, CNNSettings().crop_size)
        for seed in args.seeds:
            scores += cnn_rows(crops, masks, table, cfg, seed, watch)
        meta["methods"].append(CNN_METHOD)
        for seed in args.seeds:  # the CNN has no embedding: no invariance figures
            invariance.append({"method": CNN_METHOD, "seed": seed, "mmd": np.nan,
                               "domain_clf_acc": np.nan})
    meta["load_average_end"] = os.getloadavg()
    scores, invariance = pd.DataFrame(scores), pd.DataFrame(invariance)
    summary = summarise(scores, invariance)
    speed = pd.DataFrame(watch.rows)
    for name, frame in (("scores.csv", scores), ("invariance.csv", invariance)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    write_text_atomic(out / "results.json", json.dumps(
        {"meta": meta, "summary": summary.to_dict("records"), "segmentation": seg_quality,
         "speed": speed.to_dict("records"), "argv": sys.argv[1:]}, indent=2, default=float))
    text = markdown(summary, seg_quality, speed, meta)
    write_text_atomic(out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
