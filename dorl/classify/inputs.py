"""The feature sets a classification compares: one :class:`FeatureInput` per stored feature file
and key, restricted to labelled cells."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dorl.classify.protocols import has_groups
from dorl.data.taxonomy import UNKNOWN
from dorl.domain_scaler import DomainStandardScaler
from dorl.featstore import FeatureFileError, cell_paths, read_features

logger = logging.getLogger(__name__)

#: Labels that mean "no usable label": never trained or scored on.
UNLABELLED = (UNKNOWN, "")


@dataclass
class FeatureInput:
    """One feature set of the comparison, restricted to labelled cells.

    Attributes
    ----------
    name : str
        The key in ``classify.features``.
    path : Path
    key : str
        ``X`` or the ``obsm`` key the features come from.
    X : ndarray of shape (n_labelled, n_features), float32
    labels, domains : ndarray of shape (n_labelled,), str
    groups : ndarray of shape (n_labelled,) or None
        Near-duplicate groups, when some group holds several cells.
    n_unknown : dict of str -> int
        Cells left out per domain because they are ``unknown`` or unlabelled.
    signature : dict
        The file's ``uns/signature`` (empty when it has none).
    domain_scaler : DomainStandardScaler or None
        Per-domain statistics over all the file's cells, labelled or not (the ``domain_std``
        adaptation); None: fitted on the labelled cells when needed.
    n_qc_failed : dict of str -> int
        Labelled cells left out per domain because they failed quality control (``qc_pass``).
    user_labelled : bool ndarray of shape (n_labelled,) or None
        The cells labelled by the user (``classify.target_labels``), whose labels replace the
        file's: they train, and are never scored on.
    encoder_sha256 : str or None
        The hash of the trained cell encoder the features came from (``uns/hashes``); None for
        the pretrained encoder or a file from elsewhere.
    embedding_sha256 : str
        The hash of the whole embedding of ``key`` and its cell ids
        (:meth:`dorl.featstore.FeatureSet.embedding_sha256`), which saved models record.
    """

    name: str
    path: Path
    key: str
    X: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    groups: np.ndarray | None
    n_unknown: dict[str, int] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    domain_scaler: DomainStandardScaler | None = None
    n_qc_failed: dict[str, int] = field(default_factory=dict)
    user_labelled: np.ndarray | None = None
    encoder_sha256: str | None = None
    embedding_sha256: str = ""

    def standardised(self) -> np.ndarray:
        """``X`` with each domain standardised by its own statistics, float32, same shape."""
        scaler = self.domain_scaler or DomainStandardScaler().fit(self.X, domains=self.domains)
        return scaler.transform(self.X, domains=self.domains).astype(np.float32)


def encoder_hash(uns: dict) -> str | None:
    """The trained cell encoder's hash a feature file's ``uns`` records (None: none trained)."""
    value = dict(uns.get("hashes", {}) or {}).get("cae_encoder")
    return None if value is None else str(value)


def read_target_labels(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """The user's labels of target cells: a ``path,label`` CSV (the explorer's download), as
    cell path -> label. A label is read without case or surrounding spaces (``Neutrophil `` is
    ``neutrophil``).

    Parameters
    ----------
    path : str or Path
    classes : sequence of str
        The label space's classes: the only labels a row may give, besides ``unknown``.

    Raises
    ------
    FeatureFileError
        In one line, when the file is missing, empty or without rows, has no ``path`` and
        ``label`` columns (naming the separator it found, when it is not a comma), gives a label
        outside ``classes``, or gives one cell two different labels.
    """
    from dorl.data.readers import separator_hint

    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"classify.target_labels: file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise FeatureFileError(f"{path}: empty file; classify.target_labels needs path,label "
                               f"rows") from None
    missing = sorted({"path", "label"} - set(table.columns))
    if missing:
        raise FeatureFileError(f"{path}: missing column(s) {missing}{separator_hint(path)}; "
                               f"needs path,label")
    if table.empty:
        raise FeatureFileError(f"{path}: no rows under the path,label header")
    known = {c.lower(): c for c in (*classes, UNKNOWN)}  # unknown: left out, as in a manifest
    labels = table["label"].str.strip().str.lower().map(known)
    foreign = table.loc[labels.isna(), "label"]
    if len(foreign):
        raise FeatureFileError(
            f"{path}: {len(foreign)} row(s) give a label outside the label space, e.g. "
            f"{sorted(set(foreign))[:3]} (line {int(foreign.index[0]) + 2}); labels: "
            f"{', '.join(classes)}")
    table = table.assign(label=labels)
    conflicts = table.groupby("path")["label"].nunique()
    conflicts = conflicts[conflicts > 1]
    if len(conflicts):
        raise FeatureFileError(f"{path}: {len(conflicts)} cell(s) are given two different "
                               f"labels, e.g. {conflicts.index[0]!r}")
    return dict(zip(table["path"], table["label"]))


def match_cell_paths(paths: np.ndarray, user_labels: dict[str, str]
                     ) -> tuple[dict[str, str], list[str]]:
    """The user's labels by the feature file's cell paths, and the rows that match no cell.

    A row matches a cell whose stored path it equals, or, when the row gives the path another
    way (absolute, or relative to another folder), the cell whose stored path (without its
    leading ``../``) is the longest tail of the row's path.
    """
    stored = set(paths.tolist())
    by_tail = {}
    for p in stored:
        parts = [x for x in PurePath(p).parts if x not in ("..", ".")]
        by_tail.setdefault("/".join(parts), p)
    by_cell, unmatched = {}, []
    for row, label in user_labels.items():
        parts = PurePath(os.path.normpath(row)).parts
        tails = ("/".join(parts[k:]) for k in range(len(parts)))
        cell = row if row in stored else next((by_tail[t] for t in tails if t in by_tail), None)
        if cell is None:
            unmatched.append(row)
        elif by_cell.setdefault(cell, label) != label:
            raise FeatureFileError(f"classify.target_labels gives the cell {cell!r} two "
                                   f"different labels (one row as {row!r})")
    return by_cell, unmatched


def load_input(name: str, path: str | Path, key: str = "X",
               domain_stats: bool = True,
               user_labels: dict[str, str] | None = None,
               keep_qc_failed: bool = False) -> FeatureInput:
    """Read one feature file and keep its labelled cells.

    Parameters
    ----------
    name : str
    path : str or Path
    key : str, default="X"
        ``X`` or an ``obsm`` key.
    domain_stats : bool, default=True
        Fit the per-domain statistics over all the file's cells (the standardised adaptations
        need them; without they are not computed).
    user_labels : dict of str -> str, optional
        Labels the user gave cells, by cell path (:func:`read_target_labels`).
    keep_qc_failed : bool, default=False
        Keep the cells that failed quality control (left out and counted by default).
    """
    fs = read_features(path, obsm=key != "X")
    X = fs.features(key)
    labels = np.asarray(fs.labels, dtype=object)
    user = np.zeros(len(labels), bool)
    if user_labels:
        paths = cell_paths(fs.obs)
        by_cell, unmatched_rows = match_cell_paths(paths, user_labels)
        user = np.isin(paths, list(by_cell))
        if not user.any():
            raise FeatureFileError(f"{path}: none of the {len(user_labels)} cells of "
                                   f"classify.target_labels is in it (matched by path)")
        labels[user] = [by_cell[p] for p in paths[user]]
        unmatched = len(unmatched_rows)
        if unmatched:
            example = unmatched_rows[0]
            logger.warning("%s: %d of the %d cells of classify.target_labels are not in it "
                           "(matched by path as the feature file stores it, e.g. %r)", path,
                           unmatched, len(user_labels), example)
    labels = labels.astype(str)
    keep = ~np.isin(labels, UNLABELLED)
    if not keep.any():
        raise FeatureFileError(f"{path}: no labelled cells (all are {UNLABELLED})")
    dropped = pd.Series(fs.domains[~keep]).value_counts()
    failed = pd.Series(dtype=int)
    if "qc_pass" in fs.obs and not keep_qc_failed:
        bad = keep & ~fs.obs["qc_pass"].astype(bool).to_numpy()
        failed = pd.Series(fs.domains[bad]).value_counts()
        keep &= ~bad
        if not keep.any():
            raise FeatureFileError(f"{path}: every labelled cell failed quality control")
    groups = fs.obs["group"].astype(str).to_numpy()[keep] if "group" in fs.obs else None
    return FeatureInput(name, Path(path), key, X[keep], labels[keep], fs.domains[keep],
                        groups if has_groups(groups) else None,
                        {str(d): int(n) for d, n in dropped.items()},
                        dict(fs.uns.get("signature", {})),
                        DomainStandardScaler().fit(X, domains=fs.domains) if domain_stats
                        else None, n_qc_failed={str(d): int(n) for d, n in failed.items()},
                        user_labelled=user[keep] if user.any() else None,
                        encoder_sha256=encoder_hash(fs.uns),
                        embedding_sha256=fs.embedding_sha256(key))
