"""Classify-stage reports: ``results.csv``, ``results.md``, ``summary.json``, and the figures of
:mod:`dorl.classify.report_figures`.

``results.md`` follows the papers' layout (one column per source -> target pair, the diagonal
being in-domain), but keeps the in-domain mean and the cross-domain mean in separate columns,
reports macro-F1 on shared classes as the headline, and states the full-label-space ceiling.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dorl.atomic import atomic_path, write_text_atomic
from dorl.classify.aggregates import (
    CHOICE_RULES,
    MODEL_COLUMNS,
    cell_stats,
    classifier_choices,
    few_shot_curve,
    full_scope_ceilings,
    in_lab_ceiling,
    pooled_mean,
)
from dorl.classify.inputs import FeatureInput
from dorl.classify.registry import display_name
from dorl.classify.report_figures import plot_confusions, plot_few_shot
from dorl.classify.settings import ClassifySettings
from dorl.classify.shots import AUTO
from dorl.provenance import package_versions, utc_now
from dorl.tables import markdown_table

logger = logging.getLogger(__name__)



def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _pair_columns(stats: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(protocol, source, target) of every table column, sources then targets sorted."""
    idx = stats.index.to_frame(index=False)
    pairs = idx[idx["protocol"].isin(["in_domain", "source_target"])]
    pairs = pairs[["protocol", "source", "target"]].drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()), key=lambda p: (p[1], p[2]))


def pair_table(results: pd.DataFrame, scope: str, metric: str) -> str:
    """Markdown table: rows feature set x adaptation x classifier, columns source -> target,
    then means."""
    stats = cell_stats(results)
    columns = _pair_columns(stats)
    cross = pooled_mean(results, ("source_target",), scope, metric)
    within = pooled_mean(results, ("in_domain",), scope, metric)
    header = (["features", "adaptation", "classifier"] + [f"{s} → {t}" for _, s, t in columns]
              + ["in-domain mean", "**cross-domain mean**"])
    rows = []
    pairs = results[results["protocol"].isin(["in_domain", "source_target"])]
    for fs, adaptation, clf in pairs[MODEL_COLUMNS].drop_duplicates().to_numpy():
        cells = [fs, adaptation, display_name(clf)]
        for protocol, source, target in columns:
            key = (fs, adaptation, clf, protocol, source, target, 0, scope, metric)
            cells.append(_fmt(*stats.loc[key, ["mean", "std"]]) if key in stats.index else "–")
        for pooled, bold in ((within, False), (cross, True)):
            row = pooled[(pooled["feature_set"] == fs) & (pooled["adaptation"] == adaptation)
                         & (pooled["classifier"] == clf)]
            text = _fmt(row["mean"].iloc[0], row["std"].iloc[0]) if len(row) else "–"
            cells.append(f"**{text}**" if bold and len(row) else text)
        rows.append(cells)
    return markdown_table(header, rows)


def in_lab_table(results: pd.DataFrame) -> str:
    """Markdown table of :func:`in_lab_ceiling`."""
    table = in_lab_ceiling(results)
    return markdown_table(
        ["features", "adaptation", "classifier", "source → target", "cross-lab", "in-lab",
         "**kept**"],
        [[r.feature_set, r.adaptation, display_name(r.classifier), f"{r.source} → {r.target}",
          f"{r.cross_lab:.3f}", f"{r.in_lab:.3f}", f"**{r.kept:.0%}**"]
         for r in table.itertuples()])


def lodo_table(results: pd.DataFrame) -> str:
    """Markdown table of leave-one-domain-out macro-F1 (shared and full) per held-out domain."""
    stats = cell_stats(results)
    idx = stats.index.to_frame(index=False)
    targets = sorted(idx.loc[idx["protocol"] == "lodo", "target"].unique())
    header = (["features", "adaptation", "classifier"] + [f"held out {t}" for t in targets]
              + ["mean"])
    rows = []
    for scope in ("shared", "full"):
        pooled = pooled_mean(results, ("lodo",), scope, "macro_f1")
        for fs, adaptation, clf, mean, std in pooled.to_numpy():
            cells = [fs, adaptation, f"{display_name(clf)} ({scope})"]
            for t in targets:
                sub = stats[(idx["feature_set"].eq(fs) & idx["adaptation"].eq(adaptation)
                             & idx["classifier"].eq(clf)
                             & idx["protocol"].eq("lodo") & idx["target"].eq(t)
                             & idx["scope"].eq(scope) & idx["metric"].eq("macro_f1")).to_numpy()]
                cells.append(_fmt(*sub[["mean", "std"]].iloc[0]) if len(sub) else "–")
            rows.append(cells + [_fmt(mean, std)])
    return markdown_table(header, rows)


def choice_table(results: pd.DataFrame) -> str:
    """Markdown table of :func:`classifier_choices`: one column per rule."""
    choices = classifier_choices(results)
    header = ["features", "adaptation", "source → target"] + list(CHOICE_RULES.values())
    rows = []
    for (fs, adaptation, source, target), group in choices.groupby(
            ["feature_set", "adaptation", "source", "target"], sort=False):
        by_rule = group.set_index("rule")
        cells = [fs, adaptation, f"{source} → {target}"]
        for rule in CHOICE_RULES:
            if rule in by_rule.index:
                r = by_rule.loc[rule]
                cells.append(f"{display_name(r['classifier'])}: {_fmt(r['mean'], r['std'])}")
            else:
                cells.append("–")
        rows.append(cells)
    return markdown_table(header, rows)


def target_labels_table(results: pd.DataFrame) -> str:
    """Markdown table of the ``target_labels`` protocol beside the same model's cross-domain
    score without those cells."""
    sel = results[(results["scope"] == "shared") & (results["metric"] == "macro_f1")
                  & (results["label"] == "")]
    keys = ["feature_set", "adaptation", "classifier", "source", "target"]
    labelled = sel[sel["protocol"] == "target_labels"].groupby(keys).agg(
        macro_f1=("value", "mean"), per_class=("shots", "first"), n_test=("n_test", "mean"))
    plain = sel[sel["protocol"] == "source_target"].groupby(keys)["value"].mean()
    header = ["features", "adaptation", "classifier", "source → target", "without them",
              "with them", "labels per class", "cells scored"]
    return markdown_table(header, [
        [*key[:3], f"{key[3]} → {key[4]}", f"{plain.get(key, float('nan')):.3f}",
         f"{r.macro_f1:.3f}", int(r.per_class), f"{r.n_test:.0f}"]
        for key, r in labelled.iterrows()])


def few_shot_table(results: pd.DataFrame) -> str:
    """Markdown table of :func:`few_shot_curve`: one column per number of shots."""
    curve = few_shot_curve(results)
    shots = sorted(curve["shots"].unique())
    header = (["features", "adaptation", "classifier", "source → target"]
              + [f"k={k}" + (" (cross-domain)" if k == 0 else "") for k in shots])
    rows = []
    for key, group in curve.groupby(MODEL_COLUMNS + ["source", "target"], sort=False):
        by_k = group.set_index("shots")
        cells = [key[0], key[1], display_name(key[2]), f"{key[3]} → {key[4]}"]
        cells += [f"{_fmt(by_k.loc[k, 'mean'], by_k.loc[k, 'std'])} ({by_k.loc[k, 'n_test']:.0f})"
                  if k in by_k.index else "–" for k in shots]
        rows.append(cells)
    return markdown_table(header, rows)


def _dropped_classes(inputs: list[FeatureInput], min_count: int) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for inp in inputs:
        for domain in sorted(set(inp.domains)):
            names, counts = np.unique(inp.labels[inp.domains == domain], return_counts=True)
            small = [f"{n} ({c})" for n, c in zip(names, counts) if c < min_count]
            if small:
                out.setdefault(inp.name, {})[domain] = small
    return out


def _shot_route(c: ClassifySettings) -> str:
    """How the labelled target cells trained (``classify.shot_training``), in words."""
    ratio = c.shot_training.source_per_shot
    if ratio == AUTO:
        return ("with the number of source cells per labelled cell that cross-validation within "
                "the labelled cells chose")
    if ratio is None:
        return "with every source cell"
    cells = "cell" if ratio == 1 else "cells"
    return f"with {ratio:g} source {cells} per class for each labelled cell of that class"


def markdown_report(results: pd.DataFrame, inputs: list[FeatureInput],
                    c: ClassifySettings) -> str:
    """Return the whole ``results.md`` text."""
    parts = ["# Classification results", "",
             f"Folds: {c.n_folds} (stratified on each source domain), seeds: {list(c.seeds)}; "
             "cells are mean ± std (%) over folds and seeds. Rows `a → a` are in-domain "
             "(held-out source fold); `a → b` are cross-domain (the same fold models, scored on "
             "all of domain b). The cross-domain mean leaves the in-domain cells out.", "",
             f"Cells labelled unknown are never trained or scored on; classes with fewer than "
             f"{c.min_class_count} cells in a target are left out of that target's scores. "
             f"Training sets are capped at {c.max_train_cells} cells, and at "
             f"{c.kernel_svm_max_train} for the kernel SVMs (class-stratified subsamples; "
             f"self-training's pseudo-labelled cells count towards the cap); test sets are "
             f"complete.", ""]
    for inp in inputs:
        parts.append(f"* `{inp.name}`: {inp.path} [{inp.key}], {len(inp.labels)} labelled cells "
                     f"x {inp.X.shape[1]} features; unknown left out per domain: "
                     f"{inp.n_unknown or 0}; failing quality control left out: "
                     f"{inp.n_qc_failed or 0}"
                     + ("; splits are group-aware" if inp.groups is not None else ""))
    for fs, per_domain in _dropped_classes(inputs, c.min_class_count).items():
        parts.append(f"* `{fs}`: classes left out of a target's score: {per_domain}")
    parts += ["", f"Adaptations (rows of their own; none reads a target label): "
              f"{', '.join(c.adaptations)}. `none`: the stored features; `domain_std`: each "
              "domain standardised with its own statistics; `balanced_std`: each domain "
              "standardised as if every class weighed the same (training cells by their labels, "
              "the target by the model's class scores); `balanced_std_hard`: the same with the "
              "target weighted by the model's predicted classes; `coral`: `domain_std`, then each "
              "target's covariance aligned to the training cells'; `self_training`: "
              f"`domain_std`, then {c.self_training.rounds} rounds of class-balanced pseudo-"
              f"labels on the target's cells (up to {c.self_training.final_fraction:.0%} of each "
              "predicted class). The target-side adaptations change only "
              "targets the model did not train on, so their in-domain cells equal "
              "`domain_std`'s."]
    if results["protocol"].isin(["in_domain", "source_target"]).any():
        parts += ["", "## Macro-F1, classes shared by source and target (headline)", "",
                  pair_table(results, "shared", "macro_f1"),
                  "", "## Macro-F1, full target label space", "",
                  "Classes absent from the source count as misses; see the ceilings below.", "",
                  pair_table(results, "full", "macro_f1"),
                  "", "## Accuracy, shared classes (the papers' metric)", "",
                  pair_table(results, "shared", "accuracy")]
    if len(in_lab_ceiling(results)):
        parts += ["", "## Cross-lab against the in-lab ceiling", "",
                  "Each cross-lab score (macro-F1, shared classes) beside the same features, "
                  "adaptation and classifier trained and scored inside the target lab (its "
                  f"{c.n_folds}-fold in-domain score): the fraction of the ceiling kept without "
                  "a target label.", "", in_lab_table(results)]
    if (results["protocol"] == "source_target").any():
        parts += ["", "## Choosing a classifier per target", "",
                  "Macro-F1 (shared classes) of the classifier each rule picks. Source labels: "
                  "the best in-domain score. Vote agreement: the classifier that agrees most "
                  "with the other classifiers' majority vote on the target's cells; SND: the "
                  "highest soft neighbourhood density of its class scores on the target (both "
                  "label-free). Oracle: the best target score, chosen on target labels (a bound, "
                  "not a usable choice).", "", choice_table(results)]
    if (results["protocol"] == "few_shot").any():
        parts += ["", "## Few-shot target labels (learning curve, `few_shot.png`)", "",
                  f"k labelled cells per class of the target join the source's training cells, "
                  f"{_shot_route(c)} ({c.draws} random draws per k and seed; group-aware, so near-duplicates of a "
                  f"drawn cell are never tested on); scored on the target's remaining cells "
                  f"(their mean number in brackets). k=0 is the cross-domain score. A class "
                  f"with k or fewer cells in the target gets no shots.", "",
                  few_shot_table(results)]
    if (results["protocol"] == "target_labels").any():
        parts += ["", "## Your labelled target cells (`classify.target_labels`)", "",
                  f"The cells you labelled join the source's training cells, {_shot_route(c)}; "
                  "each target is scored on its other labelled cells (macro-F1, shared classes, "
                  "mean over seeds).", "", target_labels_table(results)]
    if (results["protocol"] == "lodo").any():
        parts += ["", "## Leave one domain out, macro-F1", "", lodo_table(results)]
    ceilings = full_scope_ceilings(results)
    limited = ceilings[(ceilings["ceiling_macro_f1"] < 1) | (ceilings["ceiling_accuracy"] < 1)]
    if len(limited):
        parts += ["", "## Ceilings on the full label space (classes missing from training)", "",
                  markdown_table(
                      ["features", "protocol", "source → target", "max accuracy",
                       "max macro-F1"],
                      [[r.feature_set, r.protocol, f"{r.source} → {r.target}",
                        f"{100 * r.ceiling_accuracy:.1f}", f"{100 * r.ceiling_macro_f1:.1f}"]
                       for r in limited.itertuples()])]
    return "\n".join(parts) + "\n"


def _summary(results, confusions, timings, inputs, settings: ClassifySettings,
             elapsed_s) -> dict[str, Any]:
    stats = cell_stats(results).reset_index()
    headline = {}
    for scope in ("shared", "full"):
        for name, protocols in (("cross_domain", ("source_target",)), ("in_domain", ("in_domain",)),
                                ("lodo", ("lodo",))):
            for row in pooled_mean(results, protocols, scope, "macro_f1").itertuples():
                headline.setdefault(f"{row.feature_set}/{row.adaptation}/{row.classifier}", {})[
                    f"{name}_macro_f1_{scope}"] = {"mean": row.mean, "std": row.std}
    return {
        "created_utc": utc_now(), "elapsed_s": round(elapsed_s, 2), "versions": package_versions(),
        "config": settings.section, "seed": settings.seed,
        "feature_sets": {inp.name: {"path": str(inp.path), "key": inp.key,
                                    "n_labelled": int(len(inp.labels)),
                                    "n_features": int(inp.X.shape[1]),
                                    "unknown_left_out": inp.n_unknown,
                                    "qc_failed_left_out": inp.n_qc_failed,
                                    "group_aware": inp.groups is not None,
                                    "signature": inp.signature,
                                    "class_counts": pd.crosstab(inp.domains, inp.labels)
                                    .to_dict(orient="index")}
                         for inp in inputs},
        "headline": headline,
        "classifier_choices": classifier_choices(results).to_dict(orient="records"),
        "few_shot": few_shot_curve(results).to_dict(orient="records"),
        "in_lab_ceiling": in_lab_ceiling(results).to_dict(orient="records"),
        "cells": stats.to_dict(orient="records"),
        "confusion_matrices": [{"feature_set": k[0], "adaptation": k[1], "classifier": k[2],
                                "protocol": k[3], "source": k[4], "target": k[5],
                                "labels": labels,
                                "counts": np.asarray(counts).tolist()}
                               for k, (labels, counts) in confusions.items()],
        "seconds": timings.groupby(MODEL_COLUMNS)[["fit_s", "predict_s"]].sum()
        .round(2).reset_index().to_dict(orient="records") if len(timings) else [],
    }


def write_reports(out_dir: str | Path, results: pd.DataFrame, confusions: dict,
                  timings: pd.DataFrame, inputs: list[FeatureInput],
                  settings: ClassifySettings, elapsed_s: float) -> str:
    """Write every classify report into ``out_dir``; return the headline table (markdown)."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "results.csv") as tmp:
        results.to_csv(tmp, index=False, float_format="%.6g")
    report = markdown_report(results, inputs, settings)
    write_text_atomic(out_dir / "results.md", report)
    summary = _summary(results, confusions, timings, inputs, settings, elapsed_s)
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    pngs = plot_confusions(out_dir, confusions)
    curve = plot_few_shot(out_dir, few_shot_curve(results), MODEL_COLUMNS)
    logger.info("wrote %s (results.csv, results.md, summary.json, %d confusion PNGs%s)", out_dir,
                len(pngs), ", few_shot.png" if curve else "")
    if results["protocol"].isin(["in_domain", "source_target"]).any():
        return pair_table(results, "shared", "macro_f1")
    return lodo_table(results)
