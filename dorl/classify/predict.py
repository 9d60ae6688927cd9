"""``dorl classify predict``: label the cells of a feature file with a saved classify model.

One row per cell (with its field and box when it was cut from a whole field), its class scores,
and for whole fields the differential count per field beside it. The model file is read without
running anything in it (:mod:`dorl.classify.model_files`), and refused when the feature file was
embedded in another space than the one the model was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dorl.atomic import atomic_path
from dorl.classify.adaptation import ClassBalancedModel
from dorl.classify.inputs import UNLABELLED, encoder_hash
from dorl.classify.model_files import ModelFileError, load_model_bundle
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import FeatureFileError, read_features

logger = logging.getLogger(__name__)


#: What :func:`predict_file` reads of a saved bundle (the classify stage writes more).
BUNDLE_KEYS = ("model", "classes", "feature_dim", "feature_key", "feature_signature",
               "feature_file")


def _write_differential_counts(predictions: pd.DataFrame, path: Path) -> None:
    """Per field, the white cells of each predicted class (the differential count), over the
    cells that passed QC; one row per field, classes as columns, and the total."""
    counted = predictions[predictions["field"] != ""]
    if "qc_pass" in counted:
        counted = counted[counted["qc_pass"]]
    table = pd.crosstab(counted["field"], counted["predicted"])
    table["total"] = table.sum(axis=1)
    with atomic_path(path) as tmp:
        table.to_csv(tmp)
    logger.info("differential counts of %d fields written to %s", len(table), path)


def predict_file(model_path: str | Path, features_path: str | Path, out_csv: str | Path) -> Path:
    """Label the cells of a feature file with a model saved by the classify stage.

    Raises
    ------
    ModelFileError
        When the model file is unreadable or holds an untrusted type (nothing in it runs).
    FeatureFileError
        When the feature dimension, the label space or (for
        ``X``) the embedding settings of the feature file do not match the model's.
    """
    model_path, features_path = Path(model_path), Path(features_path)
    bundle = load_model_bundle(model_path)
    missing = [k for k in BUNDLE_KEYS if k not in bundle]
    if missing:
        raise ModelFileError(f"{model_path}: not a dorl classify model (no {missing[0]!r})")
    model, classes, dim, key = (bundle["model"], bundle["classes"], bundle["feature_dim"],
                                bundle["feature_key"])
    if not hasattr(model, "predict"):
        raise ModelFileError(f"{model_path}: not a dorl classify model (its model is a "
                             f"{type(model).__name__}, which cannot predict)")
    fs = read_features(features_path, obsm=key != "X")
    X = fs.features(key)
    if X.shape[1] != dim:
        raise FeatureFileError(f"{features_path}[{key}] has {X.shape[1]} features but model "
                               f"{model_path} was trained on {dim} (from {bundle['feature_file']})")
    foreign = sorted(set(fs.labels) - set(classes) - set(UNLABELLED))
    if foreign:
        raise FeatureFileError(f"{features_path} holds labels {foreign} outside the label space "
                               f"of model {model_path}: {classes}")
    # The cells may come from another lab (another data signature), but the features must come
    # from the same encoder: a model on another run's latent space predicts noise.
    signature = dict(fs.uns.get("signature", {}))
    changed = sorted(k for k in set(signature) | set(bundle["feature_signature"])
                     if k != "data" and signature.get(k) != bundle["feature_signature"].get(k))
    # The same settings train another encoder on other cells: its features are another space.
    trained, embedded = bundle.get("encoder_sha256"), encoder_hash(fs.uns)
    if key == "X" and trained is not None and embedded != trained:
        raise FeatureFileError(
            f"{features_path} was embedded by another trained encoder (sha256 "
            f"{str(embedded)[:12]}) than the features model {model_path} was trained on "
            f"({trained[:12]}): embed these cells with `dorl apply --from` the model's run")
    if changed and key == "X":
        raise FeatureFileError(
            f"{features_path} was embedded with other settings than the features model "
            f"{model_path} was trained on ({bundle['feature_file']}): signature keys {changed} "
            f"differ. Embed these cells with the model's run, or train a model on this file")
    if changed:
        logger.warning("%s[%s] differs from the model's training features in signature keys %s",
                       features_path, key, changed)
    if isinstance(model, ClassBalancedModel):
        # Its statistics are a domain's own: standardised per domain, then predicted lab by lab.
        X = DomainStandardScaler().fit(X, domains=fs.domains).transform(X, domains=fs.domains)
        predicted = np.empty(len(X), dtype=object)
        proba = np.empty((len(X), len(classes)))
        for domain in np.unique(fs.domains):
            rows = fs.domains == domain
            predicted[rows], proba[rows] = model.predict_with_scores(X[rows])
    else:
        predicted = model.predict(X)
        proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    out = pd.DataFrame({"cell_id": fs.obs.index.astype(str), "domain": fs.domains,
                        "label": fs.labels, "predicted": np.asarray(predicted).astype(str)})
    if "path" in fs.obs:
        out.insert(1, "path", fs.obs["path"].astype(str).to_numpy())
    fields = fs.obs["field"].astype(str).to_numpy() if "field" in fs.obs else None
    if fields is not None and (fields != "").any():  # cells cut from whole fields
        out["field"] = fields
        out["box"] = fs.obs["box"].astype(str).to_numpy()
    if "qc_pass" in fs.obs:  # a failed cell is predicted, and flagged
        out["qc_pass"] = fs.obs["qc_pass"].astype(bool).to_numpy()
        out["qc_reason"] = fs.obs["qc_reason"].astype(str).to_numpy()
    if proba is not None:
        for i, name in enumerate(classes):
            out[f"p_{name}"] = proba[:, i]
    with atomic_path(out_csv) as tmp:
        out.to_csv(tmp, index=False)
    if "field" in out:
        _write_differential_counts(out, Path(out_csv).with_suffix(".counts.csv"))
    labelled = ~np.isin(out["label"], UNLABELLED)
    if labelled.any():
        logger.info("%s: accuracy %.3f on %d labelled cells", out_csv,
                    (out["label"] == out["predicted"])[labelled].mean(), labelled.sum())
    logger.info("predictions for %d cells written to %s", len(out), out_csv)
    return Path(out_csv)
