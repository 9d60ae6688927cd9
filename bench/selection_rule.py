"""The label-free rule that chooses dorl's defaults, on source labels only.

Each candidate (a ``features.*`` option, a target adaptation) is scored on the source's cells and
on the simulated labs of `bench/simulated_labs.py`; ``bench/feature_options.py`` computes the
rows, these functions choose. A candidate's *selection score* is the mean of the in-domain
macro-F1 on the source (5-fold) and the shifted-source macro-F1 (the same folds' models on their
held-out cells as each simulated lab images them), for the classifier that scores best
in-domain. The highest score wins; candidates within :data:`TIE` of it go to the earliest
(cheapest) in the candidates' order. No target label is read.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from simulated_labs import LAB_COLUMNS

#: Scores this close to the best count as ties, which go to the cheaper candidate.
TIE = 0.01


def lab_columns(selection: pd.DataFrame) -> list[str]:
    """The :data:`LAB_COLUMNS` ``selection`` holds (runs before Run I recorded none)."""
    return [c for c in LAB_COLUMNS if c in selection.columns]


def choose_default(selection: pd.DataFrame, order: Sequence[str]) -> tuple[str, pd.DataFrame]:
    """The rule over the rows of every option and seed (without adaptation), as
    ``bench/feature_options.py``'s ``shifted_source_scores`` writes them; ``order`` lists the
    options cheapest first (ties go to the earliest). Returns the chosen option and the
    per-option table."""
    selection = selection[selection["adaptation"] == "none"]
    best = selection.loc[selection.groupby(["option", "seed"])["in_domain_f1"].idxmax()]
    best = best.assign(score=(best["in_domain_f1"] + best["shifted_f1"]) / 2)
    table = best.groupby("option", sort=False)[
        ["in_domain_f1", "shifted_f1", "score", *lab_columns(selection)]].mean()
    table["classifier"] = best.groupby("option", sort=False)["classifier"].agg(
        lambda c: "/".join(sorted(set(c))))
    order = [o for o in order if o in table.index]
    table = table.loc[order]
    top = table["score"].max()
    chosen = next(o for o in order if table.loc[o, "score"] >= top - TIE)
    return chosen, table.reset_index()


def choose_adaptation(selection: pd.DataFrame, option: str,
                      adaptations: tuple[str, ...]) -> tuple[str, pd.DataFrame]:
    """The target adaptation of the headline, by the rule of docs/history/runs-a-to-m.md (Run G).

    For each seed, the classifier best in-domain on ``option``'s source cells; each adaptation
    is scored by that classifier's shifted-source macro-F1 (the simulated labs as unlabelled
    targets), averaged over seeds. ``adaptations`` starts with ``none``, whose rows hold every
    classifier. The highest wins; adaptations within :data:`TIE` of it go to the
    earliest in ``adaptations`` (cheapest first). Only source labels are read.
    """
    rows = selection[selection["option"] == option]
    plain = rows[rows["adaptation"] == "none"]
    chosen_clf = plain.loc[plain.groupby("seed")["in_domain_f1"].idxmax(), ["seed", "classifier"]]
    picked = rows.merge(chosen_clf, on=["seed", "classifier"])
    table = picked.groupby("adaptation", sort=False)[
        ["in_domain_f1", "shifted_f1", *lab_columns(selection)]].mean()
    table["classifier"] = picked.groupby("adaptation", sort=False)["classifier"].agg(
        lambda c: "/".join(sorted(set(c))))
    table = table.loc[[a for a in adaptations if a in table.index]]
    top = table["shifted_f1"].max()
    chosen = next(a for a in table.index if table.loc[a, "shifted_f1"] >= top - TIE)
    return chosen, table.reset_index()
