"""Classify-stage reports: ``results.csv``, ``results.md``, ``summary.json``, confusion PNGs.

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
from dorl.classify.inputs import FeatureInput
from dorl.classify.registry import display_name
from dorl.classify.settings import ClassifySettings
from dorl.classify.shots import AUTO
from dorl.figures import pyplot, save_figure
from dorl.provenance import package_versions, utc_now
from dorl.tables import markdown_table

logger = logging.getLogger(__name__)

_CELL = ["feature_set", "adaptation", "classifier", "protocol", "source", "target", "shots",
         "scope", "metric"]
_MODEL = ["feature_set", "adaptation", "classifier"]


def cell_stats(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds and seeds of every overall (not per-class) metric.

    Returns a DataFrame indexed by ``feature_set, adaptation, classifier, protocol, source,
    target, shots, scope, metric`` with columns ``mean, std, n`` (n = folds x seeds).
    """
    overall = results[results["label"] == ""]
    return overall.groupby(_CELL, sort=False)["value"].agg(["mean", "std", "count"]) \
        .rename(columns={"count": "n"}).fillna({"std": 0.0})


def pooled_mean(results: pd.DataFrame, protocols: tuple[str, ...], scope: str,
                metric: str) -> pd.DataFrame:
    """Mean over the (source, target) pairs of ``protocols``, per feature set, adaptation and
    classifier.

    The pairs' fold-and-seed means are averaged; ``std`` is the spread over (fold, seed) of the
    pair-averaged score. Returns columns ``feature_set, adaptation, classifier, mean, std``.
    """
    sel = results[results["protocol"].isin(protocols) & (results["scope"] == scope)
                  & (results["metric"] == metric) & (results["label"] == "")]
    if sel.empty:
        return pd.DataFrame(columns=_MODEL + ["mean", "std"])
    keys = _MODEL
    pair = sel.groupby(keys + ["source", "target"], sort=False)["value"].mean()
    mean = pair.groupby(level=keys, sort=False).mean().rename("mean")
    spread = sel.groupby(keys + ["fold", "seed"], sort=False)["value"].mean() \
        .groupby(level=keys, sort=False).std().fillna(0.0).rename("std")
    return pd.concat([mean, spread], axis=1).reset_index()


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
    for fs, adaptation, clf in pairs[_MODEL].drop_duplicates().to_numpy():
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


def in_lab_ceiling(results: pd.DataFrame) -> pd.DataFrame:
    """Each cross-lab score beside its target's in-lab ceiling: the same feature set,
    adaptation and classifier trained and scored inside the target (its ``in_domain`` k-fold),
    macro-F1 on the shared classes. Returns columns ``feature_set, adaptation, classifier,
    source, target, cross_lab, in_lab, kept`` (``kept``: cross-lab / in-lab), one row per
    source -> target pair whose target has an in-lab score."""
    sel = results[(results["scope"] == "shared") & (results["metric"] == "macro_f1")
                  & (results["label"] == "")]
    keys = _MODEL + ["source", "target"]
    cross = sel[sel["protocol"] == "source_target"].groupby(keys)["value"].mean()
    within = sel[(sel["protocol"] == "in_domain") & (sel["source"] == sel["target"])] \
        .groupby(_MODEL + ["target"])["value"].mean()
    rows = []
    for key, value in cross.items():
        ceiling = within.get((*key[:3], key[4]))
        if ceiling is not None:
            rows.append(dict(zip(keys, key), cross_lab=value, in_lab=ceiling,
                             kept=value / ceiling if ceiling > 0 else float("nan")))
    return pd.DataFrame(rows, columns=keys + ["cross_lab", "in_lab", "kept"])


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


CHOICE_RULES = {
    "source": "source labels (best in-domain)",
    "agreement": "label-free: vote agreement",
    "snd": "label-free: SND",
    "oracle": "oracle (target labels)",
}


def classifier_choices(results: pd.DataFrame) -> pd.DataFrame:
    """The classifier each rule picks per feature set, adaptation and source -> target pair.

    Rules (:data:`CHOICE_RULES`): the best in-domain macro-F1 on the source (source labels
    only), the highest mean agreement with the other classifiers' vote on the target, the
    highest mean soft neighbourhood density on the target (neither reads a target label), and
    the oracle, the best target macro-F1 (an optimistic bound, not a usable choice). Means are
    over folds and seeds, scores on the shared classes.

    Returns
    -------
    DataFrame
        Columns ``feature_set, adaptation, source, target, rule, classifier, mean, std``.
    """
    stats = cell_stats(results).reset_index()
    cross = stats[stats["protocol"] == "source_target"]
    f1 = cross[(cross["scope"] == "shared") & (cross["metric"] == "macro_f1")]
    within = stats[(stats["protocol"] == "in_domain") & (stats["scope"] == "shared")
                   & (stats["metric"] == "macro_f1")]
    free = cross[cross["scope"] == "label_free"]
    rows = []
    for (fs, adaptation, source, target), group in f1.groupby(
            ["feature_set", "adaptation", "source", "target"], sort=False):
        score = group.set_index("classifier")[["mean", "std"]]
        same = ((within["feature_set"] == fs) & (within["adaptation"] == adaptation)
                & (within["source"] == source))
        pair = ((free["feature_set"] == fs) & (free["adaptation"] == adaptation)
                & (free["source"] == source) & (free["target"] == target))
        criteria = {"source": within[same].set_index("classifier")["mean"],
                    "agreement": free[pair & (free["metric"] == "agreement")]
                    .set_index("classifier")["mean"],
                    "snd": free[pair & (free["metric"] == "snd")].set_index("classifier")["mean"],
                    "oracle": score["mean"]}
        for rule, values in criteria.items():
            values = values[values.index.isin(score.index)].dropna()
            if values.empty:
                continue
            clf = values.idxmax()
            rows.append({"feature_set": fs, "adaptation": adaptation, "source": source,
                         "target": target, "rule": rule, "classifier": clf,
                         "mean": score.loc[clf, "mean"], "std": score.loc[clf, "std"]})
    return pd.DataFrame(rows, columns=["feature_set", "adaptation", "source", "target", "rule",
                                       "classifier", "mean", "std"])


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


def few_shot_curve(results: pd.DataFrame) -> pd.DataFrame:
    """Macro-F1 (shared classes) against labelled target cells per class.

    ``shots`` 0 is the same model key's ``source_target`` score (no target label). Returns
    columns ``feature_set, adaptation, classifier, source, target, shots, mean, std, n,
    n_test`` (``n``: draws x seeds; ``n_test``: mean test cells).
    """
    sel = results[results["protocol"].isin(["few_shot", "source_target"])
                  & (results["scope"] == "shared") & (results["metric"] == "macro_f1")]
    models = results.loc[results["protocol"] == "few_shot", _MODEL].drop_duplicates()
    sel = sel.merge(models, on=_MODEL)
    keys = _MODEL + ["source", "target", "shots"]
    curve = sel.groupby(keys)["value"].agg(["mean", "std", "count"]).rename(
        columns={"count": "n"}).fillna({"std": 0.0})
    curve["n_test"] = sel.groupby(keys)["n_test"].mean()
    return curve.reset_index()


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
    for key, group in curve.groupby(_MODEL + ["source", "target"], sort=False):
        by_k = group.set_index("shots")
        cells = [key[0], key[1], display_name(key[2]), f"{key[3]} → {key[4]}"]
        cells += [f"{_fmt(by_k.loc[k, 'mean'], by_k.loc[k, 'std'])} ({by_k.loc[k, 'n_test']:.0f})"
                  if k in by_k.index else "–" for k in shots]
        rows.append(cells)
    return markdown_table(header, rows)


def plot_few_shot(out_dir: Path, results: pd.DataFrame) -> Path | None:
    """``few_shot.png``: the learning curve, one panel per source -> target pair."""
    curve = few_shot_curve(results)
    if curve.empty:
        return None
    plt = pyplot()

    pairs = curve[["source", "target"]].drop_duplicates().to_numpy()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (source, target) in zip(axes[0], pairs):
        panel = curve[(curve["source"] == source) & (curve["target"] == target)]
        for key, line in panel.groupby(_MODEL, sort=False):
            line = line.sort_values("shots")
            ax.errorbar(line["shots"], line["mean"], yerr=line["std"], marker="o", capsize=2,
                        label=f"{key[0]} / {key[1]} / {display_name(key[2])}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("labelled target cells per class (k)")
        ax.set_ylabel("macro-F1 (shared classes)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{source} → {target}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, out_dir / "few_shot.png")


def _ceilings(results: pd.DataFrame) -> pd.DataFrame:
    """Full-scope ceilings per feature set, protocol, source and target (mean over folds)."""
    sel = results[(results["scope"] == "full")
                  & results["metric"].isin(["ceiling_accuracy", "ceiling_macro_f1"])]
    return sel.pivot_table(index=["feature_set", "protocol", "source", "target"],
                           columns="metric", values="value", aggfunc="mean").reset_index()


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
    ceilings = _ceilings(results)
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
        "seconds": timings.groupby(_MODEL)[["fit_s", "predict_s"]].sum()
        .round(2).reset_index().to_dict(orient="records") if len(timings) else [],
    }


#: The protocols drawn as confusion PNGs: those that score a lab the model never trained on.
#: Every protocol's counts are in summary.json.
CONFUSION_FIGURE_PROTOCOLS = ("source_target", "lodo")


def plot_confusions(out_dir: Path, confusions: dict) -> list[Path]:
    """One PNG per feature set x adaptation x classifier x cross-domain protocol
    (:data:`CONFUSION_FIGURE_PROTOCOLS`), one panel per source -> target pair.

    Colours are row-normalised (recall per true class); numbers are counts over folds and seeds.
    """
    plt = pyplot()

    groups: dict[tuple, list] = {}
    for (fs, adaptation, clf, protocol, source, target), value in confusions.items():
        if protocol in CONFUSION_FIGURE_PROTOCOLS:
            groups.setdefault((fs, adaptation, clf, protocol), []).append((source, target, value))
    paths = []
    for (fs, adaptation, clf, protocol), panels in groups.items():
        panels.sort(key=lambda p: (p[0], p[1]))
        n_labels = len(panels[0][2][0])
        # Fixed margins (inches) for the rotated class names: a constrained layout measured
        # every label and took most of the figure's time.
        side, margin, top = 0.3 * n_labels + 0.2, 1.1, 0.6
        width, height = margin + len(panels) * (side + 0.3), side + margin + top
        fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
        fig.subplots_adjust(left=margin / width, right=1 - 0.2 / width, bottom=margin / height,
                            top=1 - top / height, wspace=0.3 / side)
        for ax, (source, target, (labels, counts)) in zip(axes[0], panels):
            counts = np.asarray(counts)
            rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
            for (i, j), n in np.ndenumerate(counts):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [], fontsize=7)
            ax.set_title(f"{source} → {target}", fontsize=8)
            ax.set_xlabel("predicted", fontsize=7)
        axes[0][0].set_ylabel("true", fontsize=7)
        fig.suptitle(f"{fs} / {adaptation} / {display_name(clf)} / {protocol}", fontsize=9)
        path = out_dir / "confusion" / f"{fs}__{adaptation}__{clf}__{protocol}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths


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
    curve = plot_few_shot(out_dir, results)
    logger.info("wrote %s (results.csv, results.md, summary.json, %d confusion PNGs%s)", out_dir,
                len(pngs), ", few_shot.png" if curve else "")
    if results["protocol"].isin(["in_domain", "source_target"]).any():
        return pair_table(results, "shared", "macro_f1")
    return lodo_table(results)
