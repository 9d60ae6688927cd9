"""The selection rule and its simulated labs (dorl/selection): ties go to the cheaper candidate,
the class-mix labs draw the mixes they name."""

import numpy as np
import pandas as pd

from simulated_labs import (
    DIFFERENTIAL,
    DIFFERENTIAL_LAB,
    PAEDIATRIC,
    PAEDIATRIC_LAB,
    class_mix_rows,
    held_out_labs,
)
from selection_rule import choose_adaptation, choose_default


def _selection_rows(shifted: dict[str, float]) -> pd.DataFrame:
    """Selection rows of one option over two seeds: logreg best in-domain, with the given
    shifted-source score per adaptation; knn worse in-domain but better shifted."""
    rows = []
    for seed in (0, 1):
        for clf, in_domain, bonus in (("logreg", 0.95, 0.0), ("knn", 0.90, 0.2)):
            for adaptation, f1 in shifted.items():
                rows.append({"option": "L0", "classifier": clf, "seed": seed,
                             "adaptation": adaptation, "in_domain_f1": in_domain,
                             "shifted_f1": f1 + bonus})
    return pd.DataFrame(rows)




def test_the_adaptation_rule_reads_the_in_domain_classifier_and_breaks_ties_cheaply():
    order = ("none", "self_training", "centroid_self_training")
    chosen, table = choose_adaptation(_selection_rows(dict(zip(order, (0.80, 0.85, 0.86)))),
                                      "L0", order)
    # self_training is within 0.01 of the top, and cheaper.
    assert chosen == "self_training" and set(table["classifier"]) == {"logreg"}
    chosen, _ = choose_adaptation(_selection_rows(dict(zip(order, (0.80, 0.805, 0.809)))),
                                  "L0", order)
    assert chosen == "none"
    chosen, _ = choose_adaptation(_selection_rows(dict(zip(order, (0.80, 0.70, 0.83)))),
                                  "L0", order)
    assert chosen == "centroid_self_training"




def test_the_differential_lab_takes_a_blood_smear_s_class_mix():
    labels = np.repeat(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil", "ig"],
                       100)
    rows = np.arange(len(labels)) + 1000
    picked = class_mix_rows(rows, labels, DIFFERENTIAL, min_count=5)
    counts = pd.Series(labels[picked - 1000]).value_counts().to_dict()
    assert counts == {"neutrophil": 100, "lymphocyte": 50, "monocyte": 12, "eosinophil": 5,
                      "basophil": 5}  # basophils: 1.7 by the mix, raised to the scorable 5
    assert set(counts) == set(DIFFERENTIAL)  # classes outside the differential are left out
    assert len(set(picked)) == len(picked) and set(picked) <= set(rows)


def test_the_paediatric_lab_is_a_child_s_mix_re_imaged():
    rng = np.random.default_rng(0)
    labels = np.repeat(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"], 40)
    crops = rng.integers(40, 230, (len(labels), 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((len(labels), 32, 32), bool)
    masks[:, 8:24, 8:24] = True
    sides = np.full(len(labels), 80.0)
    labs = held_out_labs(crops, masks, sides, labels, min_count=5)
    counts = pd.Series(labs[PAEDIATRIC_LAB].labels).value_counts().to_dict()
    assert counts == {"lymphocyte": 40, "neutrophil": 20, "monocyte": 5, "eosinophil": 5,
                      "basophil": 5} and set(counts) == set(PAEDIATRIC)
    # The differential lab keeps its cells as they are; the paediatric lab re-images its own.
    differential = labs[DIFFERENTIAL_LAB]
    first = {label: np.flatnonzero(labels == label)[0] for label in PAEDIATRIC}
    np.testing.assert_array_equal(differential.crops[differential.labels == "neutrophil"][0],
                                  crops[first["neutrophil"]])
    paediatric = labs[PAEDIATRIC_LAB]
    lymphocyte = paediatric.crops[paediatric.labels == "lymphocyte"][0]
    assert lymphocyte.shape == (32, 32, 3)
    assert not np.array_equal(lymphocyte, crops[first["lymphocyte"]])


def test_the_default_is_the_best_score_of_the_in_domain_classifier_ties_to_the_cheaper():
    def rows(scores):  # option -> (in-domain, shifted) of the better classifier; knn is worse
        return pd.DataFrame([
            {"option": o, "classifier": clf, "seed": seed, "adaptation": "none",
             "in_domain_f1": inside - (0.1 if clf == "knn" else 0),
             "shifted_f1": shifted + (0.3 if clf == "knn" else 0)}
            for o, (inside, shifted) in scores.items() for clf in ("logreg", "knn")
            for seed in (0, 1)])

    order = ["cheap", "costly"]
    chosen, table = choose_default(rows({"cheap": (0.9, 0.80), "costly": (0.9, 0.81)}), order)
    assert chosen == "cheap"  # 0.850 vs 0.855: a tie
    assert table["classifier"].tolist() == ["logreg", "logreg"]  # knn's shifted score is unread
    chosen, table = choose_default(rows({"cheap": (0.9, 0.80), "costly": (0.9, 0.85)}), order)
    assert chosen == "costly" and table["score"].round(3).tolist() == [0.85, 0.875]
