"""Readers for the published dataset layouts; each returns manifest rows for one domain.

Every adapter returns a DataFrame with absolute ``path`` (and ``mask_path``), ``domain``,
``label_raw`` and ``label_fine``; :func:`build_manifest` turns them into a validated manifest.
A folder that does not have the expected layout raises :class:`LayoutError` naming the folder
and the layout it expected.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from dorl.data.images import IMAGE_SUFFIXES
from dorl.data.manifest import (
    COLUMNS,
    DedupReport,
    Manifest,
    ManifestError,
    deduplicate,
    finalize,
    save_manifest,
    validate,
)
from dorl.data.taxonomy import RAW_TO_FINE, UNKNOWN, raw_to_fine
from dorl.fields.cells import read_fields

logger = logging.getLogger(__name__)


class LayoutError(ManifestError):
    """A dataset folder does not have the layout its format expects."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _find_child(root: Path, name: str) -> Path:
    """Return ``root/name`` if it exists, else ``root`` itself (users point at either level)."""
    return root / name if (root / name).is_dir() else root


def _require_dir(root: Path, fmt: str, layout: str) -> None:
    if not root.is_dir():
        raise LayoutError(f"{fmt}: folder not found: {root} (expected layout: {layout})")


def _walk_class_folders(root: Path, fmt: str, layout: str) -> list[tuple[Path, Path]]:
    """Every (class folder, image) pair under ``root``; no image at all is a layout error."""
    pairs = [(folder, img) for folder in sorted(p for p in root.iterdir() if p.is_dir())
             for img in _images_in(folder)]
    if not pairs:
        raise LayoutError(f"{fmt}: no images in class folders under {root} "
                          f"(expected layout: {layout})")
    return pairs


def _rows(paths, domain, raws, fines, masks=None) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [str(p) for p in paths], "domain": domain, "label_raw": list(raws),
        "label_fine": list(fines), "mask_path": [str(m) if m else "" for m in (masks or
                                                 [""] * len(paths))],
    })


def read_acevedo20(root: str | Path, domain: str = "acevedo20", **_) -> pd.DataFrame:
    """Acevedo-20: ``PBC_dataset_normal_DIB/<class>/<PREFIX>_<id>.jpg``.

    The fine label comes from the file-name prefix (SNE, BNE, MY, ...), not the folder, so band
    neutrophils inside ``neutrophil/`` stay band neutrophils.
    """
    layout = "PBC_dataset_normal_DIB/<class>/<PREFIX>_<id>.jpg"
    root = _find_child(Path(root), "PBC_dataset_normal_DIB")
    _require_dir(root, "acevedo20", layout)
    paths = [img for _, img in _walk_class_folders(root, "acevedo20", layout)]
    raws = [img.stem.split("_")[0].upper() for img in paths]
    fines = [raw_to_fine(r, "acevedo20") for r in raws]
    if all(f == UNKNOWN for f in fines):
        known = sorted(RAW_TO_FINE["acevedo20"])
        raise LayoutError(f"acevedo20: no file under {root} starts with an Acevedo-20 prefix "
                          f"(expected layout: {layout}, PREFIX one of {known}); found e.g. "
                          f"{[p.name for p in paths[:3]]}")
    return _rows(paths, domain, raws, fines)


def read_matek19(root: str | Path, domain: str = "matek19", **_) -> pd.DataFrame:
    """Matek-19: ``AML-Cytomorphology_LMU/<CODE>/<CODE>_<n>.tiff``; the folder code is the label."""
    layout = "AML-Cytomorphology_LMU/<CODE>/<CODE>_<n>.tiff"
    root = _find_child(Path(root), "AML-Cytomorphology_LMU")
    _require_dir(root, "matek19", layout)
    pairs = _walk_class_folders(root, "matek19", layout)
    paths, raws = [img for _, img in pairs], [folder.name.upper() for folder, _ in pairs]
    return _rows(paths, domain, raws, [raw_to_fine(r, "matek19") for r in raws])


def read_zheng2018(root: str | Path, domain: str = "zheng2018", **_) -> pd.DataFrame:
    """Zheng 2018: ``Dataset N/NNN.bmp`` + ``NNN.png`` masks + ``Class Labels of Dataset N.csv``."""
    layout = "'Dataset N/NNN.bmp', 'Dataset N/NNN.png' and 'Class Labels of Dataset N.csv'"
    root = Path(root)
    _require_dir(root, "zheng2018", layout)
    sets = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Dataset \d+", p.name))
    if not sets:
        raise LayoutError(f"zheng2018: no 'Dataset N' folder in {root} (expected layout: {layout})")
    frames = []
    for folder in sets:
        n = folder.name.split()[-1]
        csv = root / f"Class Labels of Dataset {n}.csv"
        if not csv.is_file():
            raise LayoutError(f"zheng2018: label file missing: {csv} (expected layout: {layout})")
        labels = pd.read_csv(csv)
        # Dataset 1's official file says 'class label', Dataset 2's 'class'.
        labels.columns = [c.strip().lower().replace("class label", "class")
                          for c in labels.columns]
        if not {"image id", "class"} <= set(labels.columns):
            raise LayoutError(f"{csv}: expected columns 'image ID,class' (or 'image ID,class "
                              f"label'), got {list(labels.columns)}")
        by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".bmp", ".jpg")}
        paths, raws, masks = [], [], []
        for image_id, cls in zip(labels["image id"], labels["class"]):
            stem = f"{int(image_id):03d}"
            if stem not in by_stem:
                raise LayoutError(f"{csv}: image ID {image_id} has no image {folder}/{stem}.bmp")
            paths.append(by_stem[stem])
            raws.append(str(int(cls)))
            mask = folder / f"{stem}.png"
            masks.append(mask if mask.is_file() else None)
        frames.append(_rows(paths, domain, raws, [raw_to_fine(r, "zheng2018") for r in raws],
                            masks))
    return pd.concat(frames, ignore_index=True)


def read_class_folders(root: str | Path, domain: str | None = None,
                       aliases: dict[str, str] | None = None, **_) -> pd.DataFrame:
    """A generic ``<class>/<image>`` layout (LISC crops, Raabin-WBC, BCCD crops, ...).

    Folder names map to fine labels through ``aliases`` first, then common names
    (``neutrophil``, ``Lymphocytes``, ``eos``, ...); anything else becomes ``unknown``.
    """
    layout = "<class>/<image>"
    root = Path(root)
    _require_dir(root, "class_folders", layout)
    pairs = _walk_class_folders(root, "class_folders", layout)
    paths, raws = [img for _, img in pairs], [folder.name for folder, _ in pairs]
    aliases = dict(aliases or {})
    return _rows(paths, domain or root.name, raws,
                 [raw_to_fine(r, "class_folders", aliases) for r in raws])


def read_folder(root: str | Path, domain: str | None = None, **_) -> pd.DataFrame:
    """Unlabelled images anywhere under ``root`` (a new lab's cells): every label is ``unknown``.

    Such cells are embedded (``dorl apply``) and predicted, never trained or scored on.
    """
    layout = "<any folders>/<image>"
    root = Path(root)
    _require_dir(root, "folder", layout)
    paths = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise LayoutError(f"folder: no images under {root} (expected layout: {layout}; image "
                          f"suffixes {sorted(IMAGE_SUFFIXES)})")
    return _rows(paths, domain or root.name, [""] * len(paths), [UNKNOWN] * len(paths))


def separator_hint(path: Path) -> str:
    """A hint naming the separator of the CSV at ``path`` when it is not a comma (a semicolon
    from a spreadsheet in many locales, a tab), else an empty string."""
    import csv

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    try:
        found = csv.Sniffer().sniff(header, ";\t|,").delimiter
    except csv.Error:
        return ""
    return f" (its separator looks like {found!r}; use commas)" if found != "," else ""


def read_csv(root: str | Path, domain: str | None = None,
             aliases: dict[str, str] | None = None, **_) -> pd.DataFrame:
    """A user CSV with columns ``path, label`` and optional ``domain, mask_path, group``.

    Relative paths are taken from the CSV's folder; ``label`` goes through ``aliases`` and the
    common names like a class-folder name.
    """
    csv = Path(root)
    if not csv.is_file():
        raise LayoutError(f"csv: file not found: {csv}")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise LayoutError(f"{csv}: missing column(s) {sorted(missing)}{separator_hint(csv)}; "
                          f"needs path,label "
                          f"[,domain,mask_path,group]")
    if "domain" not in df.columns:
        if not domain:
            raise LayoutError(f"{csv}: no 'domain' column and no domain given in the source")
        df["domain"] = domain
    elif domain:
        df["domain"] = domain
    base = csv.parent

    def absolute(p: str) -> str:
        return str(p if not p or Path(p).is_absolute() else base / p)

    for column in ("path", "mask_path"):
        for line, p in enumerate(df.get(column, []), start=2):  # line 1 is the header
            if p and not Path(absolute(p)).is_file():
                raise LayoutError(f"{csv}, line {line}: {column} {p!r} not found "
                                  f"(looked for {absolute(p)})")

    out = _rows([absolute(p) for p in df["path"]], df["domain"].tolist(), df["label"],
                [raw_to_fine(r, "csv", dict(aliases or {})) for r in df["label"]],
                [absolute(m) for m in df.get("mask_path", [""] * len(df))])
    if "group" in df.columns:
        out["group"] = df["group"].values
    return out


ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "acevedo20": read_acevedo20,
    "matek19": read_matek19,
    "zheng2018": read_zheng2018,
    "class_folders": read_class_folders,
    "csv": read_csv,
    "folder": read_folder,
    "fields": read_fields,
}


def read_source(source: dict) -> pd.DataFrame:
    """Read one configured source ``{format, path, domain?, aliases?, group_by?}`` into rows.

    ``group_by: dhash`` gives near-duplicate images (e.g. shifted crops of one cell, as in the
    LISC crops) a shared ``group`` so they never land on both sides of a split.
    """
    source = dict(source)
    fmt = source.pop("format", None)
    group_by = source.pop("group_by", None)
    if fmt not in ADAPTERS:
        raise LayoutError(f"source {source}: unknown format {fmt!r}; "
                          f"choose one of {list(ADAPTERS)}")
    if "path" not in source:
        raise LayoutError(f"source {source}: needs a 'path'")
    path = source.pop("path")
    rows = ADAPTERS[fmt](path, **source)
    if group_by == "dhash":
        from dorl.data.near_duplicates import group_near_duplicates

        rows["group"] = group_near_duplicates(rows["path"].tolist())
    elif group_by is not None:
        raise LayoutError(f"source {path}: unknown group_by {group_by!r}; "
                          f"use 'dhash' or leave it out")
    return rows


def build_manifest(sources: list[dict], space: str, out_path: str | Path,
                   val_fraction: float = 0.1) -> tuple[Manifest, DedupReport]:
    """Read every source, deduplicate by content hash, validate and save the manifest.

    Paths are stored relative to the manifest's folder so the dataset and its manifest can move
    together.
    """
    if not sources:
        raise ManifestError("no data sources configured "
                            "(set data.sources or run `dorl data synth`)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    base = out_path.parent.resolve()
    # A fields source cuts its cells into files beside the manifest.
    frames = [read_source({**s, "cells_dir": out_path.parent / "field_cells"}
                          if s.get("format") == "fields" else s) for s in sources]
    df = pd.concat(frames, ignore_index=True)
    _refuse_undecodable_names(df)

    def rel(p: str) -> str:
        return os.path.relpath(p, base) if p else ""

    df["path"] = df["path"].map(rel)
    df["mask_path"] = df["mask_path"].map(rel)
    if "field" in df.columns:
        df["field"] = df["field"].fillna("").map(rel)
    if "group" in df.columns:
        df["group"] = [rel(g) if g and Path(g).is_absolute() else g for g in df["group"].fillna("")]
    df = finalize(df, space, base, val_fraction)
    df, report = deduplicate(df)
    validate(df, space, base, where=str(out_path))
    _refuse_empty_masks(df, base, str(out_path))
    save_manifest(df, out_path)
    counts = df.groupby(["domain", "label"]).size().unstack(fill_value=0)
    logger.info("manifest %s: %d cells\n%s", out_path, len(df), counts.to_string())
    n_unknown = int((df["label"] == UNKNOWN).sum())
    if n_unknown:
        raw = df.loc[df["label"] == UNKNOWN, "label_raw"].value_counts().to_dict()
        logger.warning("%d cells have no label in %r and are kept as 'unknown': %s",
                       n_unknown, space, raw)
    return Manifest(df[list(COLUMNS)], base, space), report


def _refuse_undecodable_names(df: pd.DataFrame) -> None:
    """Refuse a file name that is not valid UTF-8 (the manifest and the feature files store
    names as UTF-8), naming it with its odd bytes escaped."""
    for column in ("path", "mask_path"):
        for name in df[column]:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(name).decode("utf-8", "backslashreplace")
                raise ManifestError(f"{shown}: the file name is not valid UTF-8; rename it "
                                    f"(e.g. convmv -f latin1 -t utf8)") from None


def _refuse_empty_masks(df: pd.DataFrame, base: Path, where: str) -> None:
    """Refuse masks with no cell pixel: with fine-tuning on they would be training targets."""
    from dorl.data.images import read_cell_mask

    empty = [str(base / m) for m in df["mask_path"] if m and not read_cell_mask(base / m).any()]
    if empty:
        raise ManifestError(f"{where}: {len(empty)} mask file(s) are all background, e.g. "
                            f"{empty[:3]}; fix or remove their mask_path")


def manifest_from_config(cfg) -> Manifest:
    """Load ``cfg.data.manifest``; build it from ``cfg.data.sources`` first if it is missing."""
    path = Path(cfg.data.manifest)
    if not path.is_file() and cfg.data.sources:
        from omegaconf import OmegaConf

        sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
        build_manifest(sources, cfg.data.label_space, path)
    from dorl.data.manifest import load_manifest

    return load_manifest(path, cfg.data.label_space)
