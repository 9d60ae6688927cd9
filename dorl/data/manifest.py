"""The manifest: one row per cell image, the single source of truth for every stage.

Columns
-------
path        image path, relative to the manifest's folder (or absolute)
domain      the lab / scanner / dataset the image comes from
label       the unified label in the configured label space, or ``unknown``
label_raw   the label as the dataset states it (folder, code or file-name prefix)
label_fine  the most specific cell type known (see :mod:`dorl.data.taxonomy`)
sha256      content hash of the image file
mask_path   optional ground-truth whole-cell mask (relative like ``path``), empty if none
split       ``train`` or ``val`` (stable, chosen from the content hash), for stage-1 model selection
group       near-duplicate group id; rows sharing a group never land on both sides of a split
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dorl.atomic import atomic_path
from dorl.data.taxonomy import FINE_LABELS, UNKNOWN, TaxonomyError, fine_to_label, label_space
from dorl.errors import InputError
from dorl.provenance import sha256_file, signature_of

logger = logging.getLogger(__name__)

COLUMNS = ("path", "domain", "label", "label_raw", "label_fine", "sha256", "mask_path", "split",
           "group", "field", "box")
REQUIRED = ("path", "domain")


class ManifestError(InputError, ValueError):
    """A manifest is malformed: missing columns or files, unknown labels, duplicates, empties."""


@dataclass
class DedupReport:
    """What deduplication by content hash dropped."""

    dropped: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dropped or self.conflicting)


def val_split(sha256: pd.Series, val_fraction: float) -> pd.Series:
    """Assign ``val`` to a stable ``val_fraction`` of rows, chosen by content hash."""
    bucket = sha256.map(lambda h: int(str(h)[:8], 16) / 0xFFFFFFFF if h else 0.0)
    return pd.Series(np.where(bucket < val_fraction, "val", "train"), index=sha256.index)


def unified_labels(df: pd.DataFrame, space: str) -> list[str]:
    """Each row's label in ``space``: from its fine label when set, else its given label."""
    return [fine_to_label(f, space) if f else (lbl or UNKNOWN)
            for f, lbl in zip(df["label_fine"], df["label"])]


def finalize(rows: pd.DataFrame, space: str, base_dir: str | Path,
             val_fraction: float = 0.1) -> pd.DataFrame:
    """Fill derived columns (label, sha256, split, group) of adapter rows and order columns."""
    df = rows.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df.fillna("")
    base_dir = Path(base_dir)
    missing_hash = df["sha256"] == ""
    if missing_hash.any():
        df.loc[missing_hash, "sha256"] = [sha256_file(_resolve(base_dir, p))
                                          for p in df.loc[missing_hash, "path"]]
    df["label"] = unified_labels(df, space)
    no_split = df["split"] == ""
    df.loc[no_split, "split"] = val_split(df.loc[no_split, "sha256"], val_fraction)
    df.loc[df["group"] == "", "group"] = df.loc[df["group"] == "", "path"]
    return df[list(COLUMNS)].reset_index(drop=True)


def deduplicate(df: pd.DataFrame) -> tuple[pd.DataFrame, DedupReport]:
    """Drop byte-identical images (same ``sha256``).

    Copies that agree on the label keep their first row. Copies whose labels disagree are all
    dropped, since no label can be trusted for them. Both are listed in the report.
    """
    report = DedupReport()
    keep = np.ones(len(df), dtype=bool)
    for _, idx in df.groupby("sha256", sort=False).indices.items():
        if len(idx) < 2:
            continue
        if len(set(df["label"].iloc[idx])) > 1:
            keep[idx] = False
            report.conflicting.extend(df["path"].iloc[idx])
        else:
            keep[idx[1:]] = False
            report.dropped.extend(df["path"].iloc[idx[1:]])
    if report:
        logger.warning("deduplication: dropped %d duplicate copies and %d images whose copies "
                       "disagree on the label", len(report.dropped), len(report.conflicting))
    return df[keep].reset_index(drop=True), report


def _resolve(base_dir: Path, p: str) -> Path:
    """``p`` (relative to the manifest's folder) as a normalised path: messages then name
    ``/data/cells/x.png``, not ``/data/manifests/../cells/x.png``."""
    path = Path(p)
    return path if path.is_absolute() else Path(os.path.normpath(base_dir / path))


def subsample(table: pd.DataFrame, max_per_group: int, by: tuple[str, ...],
              seed: int) -> pd.DataFrame:
    """At most ``max_per_group`` rows of each ``by`` group, drawn with ``seed``, ordered by
    domain and path (one sampling rule for every bench and subset)."""
    return (table.groupby(list(by), group_keys=False)
            .apply(lambda g: g.sample(min(len(g), max_per_group), random_state=seed))
            .sort_values(["domain", "path"]).reset_index(drop=True))


#: The fewest cells a domain may hold: its per-domain statistics need at least two.
MIN_DOMAIN_CELLS = 2


def validate(df: pd.DataFrame, space: str, base_dir: str | Path, where: str = "manifest",
             check_files: bool = True) -> None:
    """Raise :class:`ManifestError` naming every problem found in ``df``.

    Checks the columns, that every image (and mask) exists, that labels belong to ``space``
    (or are ``unknown``), that fine labels are known, that no path repeats and no domain is empty.
    """
    problems = []
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    if missing_cols:
        raise ManifestError(f"{where}: missing required column(s) {missing_cols}; "
                            f"expected {list(COLUMNS)}")
    if len(df) == 0:
        raise ManifestError(f"{where}: has no rows")
    classes = set(label_space(space)) | {UNKNOWN}
    bad = sorted(set(df["label"]) - classes)
    if bad:
        problems.append(f"labels outside the {space!r} label space: {bad} "
                        f"(allowed: {sorted(classes)})")
    bad_fine = sorted(set(df["label_fine"]) - set(FINE_LABELS) - {UNKNOWN, ""})
    if bad_fine:
        problems.append(f"unknown fine labels: {bad_fine}")
    dup = df["path"][df["path"].duplicated()].unique().tolist()
    if dup:
        problems.append(f"{len(dup)} duplicate path(s), e.g. {dup[:3]}")
    empty_domain = (df["domain"].astype(str).str.strip() == "").sum()
    if empty_domain:
        problems.append(f"{empty_domain} row(s) with an empty domain")
    counts = df[df["label"] != UNKNOWN].groupby("domain").size()
    empty = sorted(set(df["domain"]) - set(counts.index))
    if empty:  # a new lab's unlabelled images: embedded and predicted, never trained or scored on
        logger.info("%s: domain(s) %s have no labelled cells (all 'unknown')", where, empty)
    sizes = df.groupby("domain").size()
    lone = {str(d): int(n) for d, n in sizes.items() if n < MIN_DOMAIN_CELLS}
    if lone:
        problems.append(f"domain(s) with fewer than {MIN_DOMAIN_CELLS} cells (per-domain "
                        f"statistics and alignment need more): {lone}")
    if check_files:
        base = Path(base_dir)
        missing = [p for p in df["path"] if not _resolve(base, p).is_file()]
        if missing:
            problems.append(f"{len(missing)} image file(s) not found, e.g. "
                            f"{[str(_resolve(base, p)) for p in missing[:3]]}")
        masks = [m for m in df["mask_path"] if m]
        missing = [m for m in masks if not _resolve(base, m).is_file()]
        if missing:
            problems.append(f"{len(missing)} mask file(s) not found, e.g. "
                            f"{[str(_resolve(base, m)) for m in missing[:3]]}")
    if problems:
        raise ManifestError(f"{where}: " + "; ".join(problems))


@dataclass
class Manifest:
    """A validated manifest and the folder its relative paths start from."""

    table: pd.DataFrame
    base_dir: Path
    label_space: str

    def __len__(self) -> int:
        return len(self.table)

    def image_path(self, i: int) -> Path:
        """Absolute path of row ``i``'s image."""
        return _resolve(self.base_dir, self.table["path"].iloc[i])

    def mask_path(self, i: int) -> Path | None:
        """Absolute path of row ``i``'s ground-truth mask, or None."""
        m = self.table["mask_path"].iloc[i]
        return _resolve(self.base_dir, m) if m else None

    @property
    def domains(self) -> list[str]:
        """Domain names in order of first appearance."""
        return list(dict.fromkeys(self.table["domain"]))

    def signature(self) -> str:
        """A short hash of (path, domain, label, sha256) over all rows: the data signature."""
        cols = self.table[["path", "domain", "label", "sha256"]].itertuples(index=False)
        return signature_of(tuple(row) for row in cols)

    def summary(self) -> pd.DataFrame:
        """Cells per domain and label (``unknown`` included, so nothing is hidden)."""
        return self.table.groupby(["domain", "label"]).size().unstack(fill_value=0)


def drop_unreadable(manifest: Manifest, policy: str, report: str | Path) -> Manifest:
    """Apply ``data.on_bad_image``: ``error`` returns the manifest as is (the first unreadable
    image stops the run, naming the file); ``skip`` decodes every image, drops the unreadable
    ones and lists them (path and problem) in the CSV ``report``.
    """
    from dorl.data.images import ImageReadError, read_rgb

    if policy == "error":
        return manifest
    if policy != "skip":
        raise ManifestError(f"data.on_bad_image must be 'error' or 'skip', got {policy!r}")
    bad = []
    for i in range(len(manifest)):
        try:
            read_rgb(manifest.image_path(i))
        except ImageReadError as exc:
            bad.append((i, manifest.table["path"].iloc[i], exc.problem))
    if not bad:
        return manifest
    with atomic_path(report) as tmp:
        pd.DataFrame([b[1:] for b in bad], columns=["path", "problem"]).to_csv(tmp, index=False)
    logger.warning("skipped %d unreadable image(s), listed in %s", len(bad), report)
    keep = np.ones(len(manifest), dtype=bool)
    keep[[b[0] for b in bad]] = False
    table = manifest.table[keep].reset_index(drop=True)
    validate(table, manifest.label_space, manifest.base_dir, where=str(report), check_files=False)
    return Manifest(table, manifest.base_dir, manifest.label_space)


def load_manifest(path: str | Path, space: str, check_files: bool = True) -> Manifest:
    """Load and validate a manifest CSV; labels are re-derived into ``space`` from fine labels."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (build one with `dorl data manifest` "
                            f"or `dorl data synth`)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ManifestError(f"{path}: cannot read CSV ({exc})") from exc
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    if missing_cols:
        raise ManifestError(f"{path}: missing required column(s) {missing_cols}; "
                            f"expected {list(COLUMNS)}")
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    try:
        df["label"] = unified_labels(df, space)
    except TaxonomyError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if (df["sha256"] == "").any() or (df["split"] == "").any() or (df["group"] == "").any():
        validate(df, space, path.parent, where=str(path), check_files=check_files)
        df = finalize(df, space, path.parent)
    validate(df, space, path.parent, where=str(path), check_files=check_files)
    n_unknown = int((df["label"] == UNKNOWN).sum())
    if n_unknown:
        logger.info("%s: %d of %d cells have no label in %r (kept as 'unknown')", path,
                    n_unknown, len(df), space)
    return Manifest(df[list(COLUMNS)], path.parent.resolve(), space)


def save_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest CSV atomically."""
    with atomic_path(path) as tmp:
        df[list(COLUMNS)].to_csv(tmp, index=False)
    return Path(path)
