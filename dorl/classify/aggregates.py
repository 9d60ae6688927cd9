"""Aggregates of the classify stage's per-fold results (``results.csv``): means over folds and
seeds, each cross-lab score beside its in-lab ceiling, the classifier each rule would choose, and
the few-shot learning curve. :mod:`dorl.classify.reports` renders them."""

from __future__ import annotations

import pandas as pd

#: The keys one aggregated score is indexed by, and those of one model.
CELL_COLUMNS = ["feature_set", "adaptation", "classifier", "protocol", "source", "target", "shots",
                "scope", "metric"]
MODEL_COLUMNS = ["feature_set", "adaptation", "classifier"]


def cell_stats(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds and seeds of every overall (not per-class) metric.

    Returns a DataFrame indexed by ``feature_set, adaptation, classifier, protocol, source,
    target, shots, scope, metric`` with columns ``mean, std, n`` (n = folds x seeds).
    """
    overall = results[results["label"] == ""]
    return overall.groupby(CELL_COLUMNS, sort=False)["value"].agg(["mean", "std", "count"]) \
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
        return pd.DataFrame(columns=MODEL_COLUMNS + ["mean", "std"])
    keys = MODEL_COLUMNS
    pair = sel.groupby(keys + ["source", "target"], sort=False)["value"].mean()
    mean = pair.groupby(level=keys, sort=False).mean().rename("mean")
    spread = sel.groupby(keys + ["fold", "seed"], sort=False)["value"].mean() \
        .groupby(level=keys, sort=False).std().fillna(0.0).rename("std")
    return pd.concat([mean, spread], axis=1).reset_index()


def in_lab_ceiling(results: pd.DataFrame) -> pd.DataFrame:
    """Each cross-lab score beside its target's in-lab ceiling: the same feature set,
    adaptation and classifier trained and scored inside the target (its ``in_domain`` k-fold),
    macro-F1 on the shared classes. Returns columns ``feature_set, adaptation, classifier,
    source, target, cross_lab, in_lab, kept`` (``kept``: cross-lab / in-lab), one row per
    source -> target pair whose target has an in-lab score."""
    sel = results[(results["scope"] == "shared") & (results["metric"] == "macro_f1")
                  & (results["label"] == "")]
    keys = MODEL_COLUMNS + ["source", "target"]
    cross = sel[sel["protocol"] == "source_target"].groupby(keys)["value"].mean()
    within = sel[(sel["protocol"] == "in_domain") & (sel["source"] == sel["target"])] \
        .groupby(MODEL_COLUMNS + ["target"])["value"].mean()
    rows = []
    for key, value in cross.items():
        ceiling = within.get((*key[:3], key[4]))
        if ceiling is not None:
            rows.append(dict(zip(keys, key), cross_lab=value, in_lab=ceiling,
                             kept=value / ceiling if ceiling > 0 else float("nan")))
    return pd.DataFrame(rows, columns=keys + ["cross_lab", "in_lab", "kept"])


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


def few_shot_curve(results: pd.DataFrame) -> pd.DataFrame:
    """Macro-F1 (shared classes) against labelled target cells per class.

    ``shots`` 0 is the same model key's ``source_target`` score (no target label). Returns
    columns ``feature_set, adaptation, classifier, source, target, shots, mean, std, n,
    n_test`` (``n``: draws x seeds; ``n_test``: mean test cells).
    """
    sel = results[results["protocol"].isin(["few_shot", "source_target"])
                  & (results["scope"] == "shared") & (results["metric"] == "macro_f1")]
    models = results.loc[results["protocol"] == "few_shot", MODEL_COLUMNS].drop_duplicates()
    sel = sel.merge(models, on=MODEL_COLUMNS)
    keys = MODEL_COLUMNS + ["source", "target", "shots"]
    curve = sel.groupby(keys)["value"].agg(["mean", "std", "count"]).rename(
        columns={"count": "n"}).fillna({"std": 0.0})
    curve["n_test"] = sel.groupby(keys)["n_test"].mean()
    return curve.reset_index()


def full_scope_ceilings(results: pd.DataFrame) -> pd.DataFrame:
    """Full-scope ceilings per feature set, protocol, source and target (mean over folds)."""
    sel = results[(results["scope"] == "full")
                  & results["metric"].isin(["ceiling_accuracy", "ceiling_macro_f1"])]
    return sel.pivot_table(index=["feature_set", "protocol", "source", "target"],
                           columns="metric", values="value", aggfunc="mean").reset_index()
