"""Proof on real data for the cross-domain autoencoder: every loss term as an ablation row.

Source: the Acevedo-20 subset (labelled). Targets: LISC crops and Zheng-2018, whose labels only
score. Each variant's encoder is trained once (seed 0) on the LoRA-SAM cell crops of every lab
(transductive, unlabelled), its features are computed once, and the seeds vary the classifiers.

Variants (fixed before any was measured; docs/benchmarks.md, "The cross-domain autoencoder"):

  frozen 224          the pretrained ImageNet Lite0 at 224 px (the embedding before this stage)
  frozen 128          the same at 128 px, the side the adapted encoders train and embed at
  contrastive         InfoNCE on two views, no label (the default's candidate)
  + reconstruction    + (1 - SSIM) + L1 through the light decoder
  + MMD               + multi-kernel MMD between the labs' embeddings
  + source labels     + cross-entropy on the source's labelled cells (cae.supervision)
  + source labels + class-balanced MMD
  + cross-lab colour  the second view of half the cells rendered in another lab's stain
                      statistics (cae.augment.cross_lab_stain=0.5)
  contrastive, 6 epochs / + cross-lab colour, 6 epochs
                      three times the steps
  + cross-lab neighbours
                      a second InfoNCE whose positive is the cell's nearest cell of another lab
                      in the batch, from the second epoch (cae.loss.cross_lab_neighbour=1)
  batch 32 per lab    twice the cells a step, half the steps (cae.batch_per_domain=32)
  + cross-lab neighbours, 6 epochs
  + cross-lab neighbours from the start
                      the neighbour term from the first step (cae.neighbours_after_epochs=0)

The rule that chooses the default (Run O, written before its run): LISC and Zheng are
validation labs, zero-label: their labels score, never train. A variant's score is the mean of
its LISC and Zheng macro-F1 (the classifier best in-domain, mean over the seeds). The highest
score wins; variants within 0.01 of it go to the earliest in the list above. Beside it, each
target's in-lab ceiling: a 5-fold logistic regression trained and scored inside that lab on the
same features (group-aware where near-duplicates share a group), and the fraction of it the
zero-label score keeps.

The earlier source-only rule (Run N), reported beside it:
  the source cells are split in two halves by a fixed seed. Variants with source labels learn
  from half A's labels only. Each variant's score is the mean of
    * the in-domain macro-F1 of a logistic regression fitted on half A, scored on half B, and
    * the shifted-source macro-F1: the same model on half B re-imaged by each simulated lab of
      bench/feature_options.py (colour, blur, zoom, half the resolution), each lab encoded with
      its own AdaBN statistics and standardised as its own domain (labs the encoder never saw).
  The highest score wins; variants within 0.01 of it go to the earliest in the list above
  (frozen first, unsupervised before supervised). No target label is read by the rule.

Reported beside it, never choosing: LISC and Zheng macro-F1 of every classifier (5 source folds,
3 seeds; the headline is the classifier best in-domain), and the few-shot protocol (10 labelled
LISC cells per class join the source, scored on LISC's other cells, 5 draws).

    python bench/bench_encoder_training.py --max-per-class 200 --seeds 0 1 2 \
        --out runs/encoder_bench -- num_threads=2

Writes ``results.json``, ``results.md`` and ``bench.log`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_realdata import SOURCE, rows_of, sam_stages, score_methods, subsample_manifest
from measure import Stopwatch
from sklearn.metrics import f1_score

from dorl.artifacts import CAE_CHECKPOINT
from dorl.atomic import atomic_path, write_text_atomic
from dorl.cae.settings import CAESettings
from dorl.classify.adaptation import ADAPTATIONS
from dorl.classify.protocols import kfold
from dorl.classify.registry import build_classifier
from dorl.config import load_config
from dorl.data.manifest import load_manifest
from dorl.device import get_device
from dorl.domain_scaler import DomainStandardScaler
from dorl.features.crops import cell_crops
from dorl.features.encode import FeatureSettings, build_encoder, encode_crops
from dorl.features.resolution import native_crop_sides, resample_through
from dorl.pipeline.encoder_training import train_encoder
from dorl.seeding import seed_everything
from simulated_labs import LOW_RES_FACTOR, LOW_RES_LAB, SIMULATED_LABS, reimaged

logger = logging.getLogger("bench_encoder_training")
REPO = Path(__file__).resolve().parents[1]
#: name -> config overrides; the rule's tie order is this order.
#: The adapted encoders train and embed at 128 px (a training step at 224 px costs about 3
#: times as much on CPU). Every variant pins what it needs, whatever the defaults say.
TRAINED = ["cae.enabled=true", "features.crop_size=128"]
VARIANTS = {
    "frozen 224": ["cae.enabled=false", "features.crop_size=224"],
    "frozen 128": ["cae.enabled=false", "features.crop_size=128"],
    "contrastive": TRAINED,
    "+ reconstruction": [*TRAINED, "cae.loss.reconstruction=1.0"],
    "+ MMD": [*TRAINED, "cae.loss.mmd=1.0"],
    "+ source labels": [*TRAINED, "cae.supervision=source_labels", "cae.loss.supervised=1.0",
                        f"cae.label_domains=[{SOURCE}]"],
    "+ source labels + class-balanced MMD": [
        *TRAINED, "cae.supervision=source_labels", "cae.loss.supervised=1.0",
        f"cae.label_domains=[{SOURCE}]", "cae.loss.mmd=1.0", "cae.class_balanced_mmd=true"],
    "+ cross-lab colour": [*TRAINED, "cae.augment.cross_lab_stain=0.5"],
    "contrastive, 6 epochs": [*TRAINED, "cae.epochs=6"],
    "+ cross-lab colour, 6 epochs": [*TRAINED, "cae.augment.cross_lab_stain=0.5", "cae.epochs=6"],
    "+ cross-lab neighbours": [*TRAINED, "cae.loss.cross_lab_neighbour=1.0"],
    "batch 32 per lab": [*TRAINED, "cae.batch_per_domain=32"],
    "+ cross-lab neighbours, 6 epochs": [*TRAINED, "cae.loss.cross_lab_neighbour=1.0",
                                         "cae.epochs=6"],
    "+ cross-lab neighbours from the start": [*TRAINED, "cae.loss.cross_lab_neighbour=1.0",
                                              "cae.neighbours_after_epochs=0"],
    "+ pseudo-labels": [*TRAINED, "cae.supervision=source_labels", "cae.loss.supervised=1.0",
                        f"cae.label_domains=[{SOURCE}]", "cae.pseudo_labels.weight=1.0"],
    "+ pseudo-labels, 4 epochs": [*TRAINED, "cae.supervision=source_labels",
                                  "cae.loss.supervised=1.0", f"cae.label_domains=[{SOURCE}]",
                                  "cae.pseudo_labels.weight=1.0", "cae.epochs=4"],
}
TARGETS = ("lisc", "zheng2018")
RULE_SEED, TIE, N_FOLDS = 0, 0.01, 5
FEW_SHOT, FEW_SHOT_DRAWS, FEW_SHOT_TARGET = 10, 5, "lisc"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def rule_halves(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Source rows of half A (their labels may train an encoder) and of half B (scored only),
    stratified by class, drawn with :data:`RULE_SEED`."""
    rng = np.random.default_rng(RULE_SEED)
    a, b = [], []
    for _, rows in table[table["domain"] == SOURCE].groupby("label").groups.items():
        rows = rng.permutation(np.asarray(rows))
        a.append(rows[: len(rows) // 2])
        b.append(rows[len(rows) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def encoder_of(cfg, weights: Path | None) -> tuple[torch.nn.Module, int, FeatureSettings]:
    settings = FeatureSettings.from_config(cfg)
    model = build_encoder(settings.encoders[0], settings.sam_image_size,
                          None if weights is None else str(weights))
    return model, settings.crop_size, settings


def encode(model, side, settings: FeatureSettings, crops: np.ndarray, domains: np.ndarray
           ) -> np.ndarray:
    """Features (n, d) of ``crops``, AdaBN per domain, standardised per domain."""
    X = encode_crops(model, side, crops, domains, settings.adabn_cells, settings.batch_size,
                     settings.bf16, settings.tta)
    return DomainStandardScaler().fit(X, domains=domains).transform(X, domains=domains)


def macro_f1(y, p) -> float:
    return float(f1_score(y, p, average="macro"))


def rule_score(model, side, settings, crops: np.ndarray, masks: np.ndarray, sides: np.ndarray,
               labels: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """The rule's figures for one encoder (see the module docstring); ``a``/``b`` index
    ``crops``."""
    labs = {name: reimaged(crops[b], masks[b], name)[0] for name in SIMULATED_LABS}
    labs[LOW_RES_LAB] = resample_through(crops[b], sides[b] * LOW_RES_FACTOR)
    source = encode(model, side, settings, crops, np.zeros(len(crops), int))
    clf = build_classifier("logreg", seed).fit(source[a], labels[a])
    out = {"in_domain_f1": macro_f1(labels[b], clf.predict(source[b]))}
    for name, lab_crops in labs.items():
        X = encode(model, side, settings, lab_crops, np.zeros(len(lab_crops), int))
        out[name] = macro_f1(labels[b], clf.predict(X))
    out["shifted_f1"] = float(np.mean([out[n] for n in labs]))
    out["score"] = (out["in_domain_f1"] + out["shifted_f1"]) / 2
    return out


def in_lab_ceiling(X: np.ndarray, table: pd.DataFrame, target: str, seed: int) -> float:
    """Macro-F1 of a logistic regression trained and scored inside ``target`` (5 folds,
    group-aware where near-duplicates share a group), over its classes with at least
    :data:`N_FOLDS` cells."""
    rows = np.flatnonzero(table["domain"].to_numpy() == target)
    labels = table["label"].to_numpy()[rows]
    keep = np.isin(labels, [c for c, n in pd.Series(labels).value_counts().items()
                            if n >= N_FOLDS])
    rows, labels = rows[keep], labels[keep]
    groups = table["group"].to_numpy()[rows] if "group" in table else None
    predicted = np.empty(len(rows), dtype=object)
    for train, test in kfold(labels, groups, N_FOLDS, seed):
        clf = build_classifier("logreg", seed).fit(X[rows[train]], labels[train])
        predicted[test] = clf.predict(X[rows[test]])
    return macro_f1(labels, predicted.astype(str))


def few_shot(X: np.ndarray, table: pd.DataFrame, seed: int) -> float:
    """Mean LISC macro-F1 over :data:`FEW_SHOT_DRAWS` draws of :data:`FEW_SHOT` labelled LISC
    cells per class joining the source cells (logistic regression), scored on the others."""
    domains, labels = table["domain"].to_numpy(), table["label"].to_numpy()
    src = np.flatnonzero(domains == SOURCE)
    tgt = np.flatnonzero(domains == FEW_SHOT_TARGET)
    # Classes with cells left to score after the shots (all five at 200 cells per class).
    classes = sorted(c for c in set(labels[tgt]) & set(labels[src])
                     if (labels[tgt] == c).sum() > FEW_SHOT)
    scores = []
    for draw in range(FEW_SHOT_DRAWS):
        rng = np.random.default_rng([seed, draw])
        shots = np.concatenate([rng.choice(tgt[labels[tgt] == c], FEW_SHOT, replace=False)
                                for c in classes])
        rest = np.setdiff1d(tgt[np.isin(labels[tgt], classes)], shots)
        train = np.concatenate([src, shots])
        clf = build_classifier("logreg", seed).fit(X[train], labels[train])
        scores.append(macro_f1(labels[rest], clf.predict(X[rest])))
    return float(np.mean(scores))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "realdata.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "encoder_bench"))
    ap.add_argument("--max-per-class", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--rescore", metavar="ADAPTATION", choices=ADAPTATIONS,
                    help="score the variants' saved features again with this label-free "
                         "adaptation of the classify stage, training nothing")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.FileHandler(out / "bench.log"),
                                  logging.StreamHandler(sys.stderr)])
    cfg = load_config(args.config, [f"run_dir={out}", f"data.manifest={out / 'manifest.csv'}",
                                    *args.overrides])
    if args.rescore:
        return rescore(cfg, out, args.variants, args.seeds, args.rescore)
    torch.set_num_threads(int(cfg.num_threads or 2))
    seed_everything(int(cfg.seed))
    watch = Stopwatch()
    manifest = subsample_manifest(cfg, out, args.max_per_class)
    table = manifest.table
    _, seg, _, _ = sam_stages(cfg, manifest, out, watch, zero_shot=False)
    a_rows, b_rows = rule_halves(table)
    # Half B's labels hidden from every encoder that learns from source labels.
    hidden = table.copy()
    hidden.loc[b_rows, "label"] = "unknown"
    train_manifest = rows_of(manifest, np.ones(len(table), bool))
    train_manifest.table["label"] = hidden["label"].to_numpy()
    source_rows = np.flatnonzero(table["domain"].to_numpy() == SOURCE)
    position = {r: i for i, r in enumerate(source_rows)}
    a_pos = np.array([position[r] for r in a_rows])
    b_pos = np.array([position[r] for r in b_rows])
    src_labels = table["label"].to_numpy()[source_rows]
    sides = native_crop_sides(manifest, seg)[source_rows]
    results = {"variants": {}, "n_cells": table["domain"].value_counts().to_dict()}
    for name in args.variants:
        vcfg = load_config(args.config, [f"run_dir={out / slug(name)}",
                                         f"data.manifest={out / 'manifest.csv'}",
                                         *args.overrides, *VARIANTS[name]])
        t0 = time.perf_counter()
        weights, history = None, []
        if vcfg.cae.enabled:
            result = train_encoder(train_manifest, seg, CAESettings.from_config(vcfg),
                                   out / slug(name) / "cae", int(vcfg.seed),
                                   get_device(vcfg.device),
                                   CAE_CHECKPOINT.signature(vcfg, train_manifest.signature(),
                                                            seg.meta.get("signature", "")))
            weights, history = result.checkpoint, result.history
        train_s = time.perf_counter() - t0
        model, side, fs = encoder_of(vcfg, weights)
        t0 = time.perf_counter()
        crops, masks = cell_crops(manifest, seg, fs.crop_size)
        X = encode(model, side, fs, crops, table["domain"].to_numpy())
        encode_s = time.perf_counter() - t0
        (out / slug(name)).mkdir(parents=True, exist_ok=True)
        with atomic_path(out / slug(name) / "features.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, X.astype(np.float32))
        ceiling = {t: float(np.mean([in_lab_ceiling(X, table, t, seed) for seed in args.seeds]))
                   for t in TARGETS}
        rule = rule_score(model, side, fs, crops[source_rows], masks[source_rows], sides,
                          src_labels, a_pos, b_pos, RULE_SEED)
        rows = []
        for seed in args.seeds:
            r, _ = score_methods({name: X}, table, vcfg, seed, out / "classify" / slug(name))
            rows += r
        scores = pd.DataFrame(rows)
        shots = [few_shot(X, table, seed) for seed in args.seeds]
        results["variants"][name] = {"train_s": train_s, "encode_s": encode_s, "rule": rule,
                                     "history": history, "scores": rows,
                                     "few_shot_lisc_10": shots, "in_lab": ceiling}
        logger.info("%s: trained %.0f s, encoded %.0f s, rule %s, few-shot %.3f", name,
                    train_s, encode_s, {k: round(v, 3) for k, v in rule.items()},
                    np.mean(shots))
        logger.info("\n%s", scores.groupby(["classifier", "target"])["macro_f1"]
                    .agg(["mean", "std"]).round(3).to_string())
        write_text_atomic(out / "results.json", json.dumps(results, indent=1, default=float))
    write_text_atomic(out / "results.md", render(results))
    print(render(results))
    return 0


def rescore(cfg, out: Path, variants: list[str], seeds: list[int], adaptation: str) -> int:
    """The zero-label table of each variant's saved features under ``adaptation``; written to
    ``rescore_<adaptation>.md``."""
    table = load_manifest(out / "manifest.csv", str(cfg.data.label_space)).table
    lines = [f"Adaptation: {adaptation}; logistic regression; mean ± std over seeds {seeds}.", "",
             "| variant | LISC | Zheng | mean |", "|---|---|---|---|"]
    for name in variants:
        X = np.load(out / slug(name) / "features.npy")
        rows = []
        for seed in seeds:
            rows += score_methods({name: X}, table, cfg, seed, out / "classify" / slug(name),
                                  adaptation)[0]
        by = pd.DataFrame(rows).groupby("target")["macro_f1"]
        mean, std = by.mean(), by.std()
        lines.append(f"| {name} | " + " | ".join(f"{mean[t]:.3f} ± {std[t]:.3f}"
                                                 for t in TARGETS)
                     + f" | {np.mean([mean[t] for t in TARGETS]):.3f} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / f"rescore_{adaptation}.md", text)
    print(text)
    return 0


def render(results: dict) -> str:
    """The targets' table with each variant's time and in-lab ceilings, the validation-lab
    rule's choice, then the source-only rule's table and choice."""
    lines = ["| variant | train s | classifier (best in-domain) | in-domain | LISC | Zheng | "
             "mean | LISC in-lab | Zheng in-lab | kept | few-shot LISC (10/class) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    validation = []
    for name, v in results["variants"].items():
        s = pd.DataFrame(v["scores"])
        by = s.groupby(["classifier", "target"])["macro_f1"]
        mean, std = by.mean(), by.std()
        in_domain = {c: mean[(c, t)] for c, t in mean.index if "5-fold" in t}
        best = max(in_domain, key=in_domain.get)

        def cell(target):
            return f"{mean[(best, target)]:.3f} ± {std[(best, target)]:.3f}"

        zero = {t: mean[(best, t)] for t in TARGETS}
        ceiling = v.get("in_lab", {})
        kept = (np.mean([zero[t] / ceiling[t] for t in TARGETS]) if ceiling else np.nan)
        validation.append((name, float(np.mean(list(zero.values())))))
        lines.append(f"| {name} | {v['train_s']:.0f} | {best} | {in_domain[best]:.3f} | "
                     f"{cell('lisc')} | {cell('zheng2018')} | {validation[-1][1]:.3f} | "
                     f"{ceiling.get('lisc', np.nan):.3f} | {ceiling.get('zheng2018', np.nan):.3f}"
                     f" | {kept:.0%} | {np.mean(v['few_shot_lisc_10']):.3f} |")
    lines += ["", f"Chosen by the validation-lab rule: **{chosen_by(validation)}**", "",
              "| variant | in-domain (B) | shifted (B) | source-only rule score |",
              "|---|---|---|---|"]
    ranked = []
    for name, v in results["variants"].items():
        r = v["rule"]
        ranked.append((name, r["score"]))
        lines.append(f"| {name} | {r['in_domain_f1']:.3f} | {r['shifted_f1']:.3f} | "
                     f"{r['score']:.3f} |")
    lines += ["", f"Chosen by the source-only rule: **{chosen_by(ranked)}**"]
    return "\n".join(lines) + "\n"


def chosen_by(scores: list[tuple[str, float]]) -> str:
    """The first of ``scores`` (name, score) within :data:`TIE` of the highest."""
    top = max(s for _, s in scores)
    return next(n for n, s in scores if s >= top - TIE)


if __name__ == "__main__":
    sys.exit(main())
