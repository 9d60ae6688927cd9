"""A ``fields`` source: whole microscope fields in, one manifest row per white cell out.

Each field's white cells come from its box file (``boxes: given``) or from label-free
detection (``boxes: detect``, :mod:`dorl.fields.detect`, size bounds learnt from the source's
own fields). Each cell is cut from its field at the field's own resolution, with ``margin`` of
its box's side on every side, and written as a PNG under ``cells_dir`` (a derived file, named by
its field and box, so the same field and box always give the same cell id). The manifest row
names the crop in ``path``, and its field in ``field`` and the cell's box in ``box``
(``x0 y0 x1 y1`` in the field's pixels); the rest of the pipeline reads the crop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from dorl.atomic import atomic_path
from dorl.data.images import IMAGE_SUFFIXES, read_rgb
from dorl.data.manifest import ManifestError
from dorl.data.taxonomy import raw_to_fine
from dorl.fields.boxes import FORMATS, read_boxes
from dorl.fields.detect import (DetectionSettings, candidate_map, component_areas, detect_cells,
                                learn_size_bounds)
from dorl.fields.metrics import box_iou

logger = logging.getLogger(__name__)

BOX_SOURCES = ("given", "detect")
#: A field's box touching its border within this many pixels is a cell cut by the edge.
EDGE_PX = 1.0


def field_images(root: Path) -> list[Path]:
    """Every image under ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def box_file(field: Path, box_dir: Path | None) -> Path | None:
    """The field's box file: ``<box_dir or the field's folder's sibling 'labels'>/<stem>.txt``
    or ``.xml``; None when there is none."""
    folders = [box_dir] if box_dir is not None else [field.parent.parent / "labels", field.parent]
    for folder in folders:
        for suffix in FORMATS:
            candidate = folder / f"{field.stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def cut_cell(field: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The cell of ``box`` (x0, y0, x1, y1) with ``margin`` of its side around it, clipped to
    the field."""
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    height, width = field.shape[:2]
    left, top = int(max(0, np.floor(x0 - dx))), int(max(0, np.floor(y0 - dy)))
    right, bottom = int(min(width, np.ceil(x1 + dx))), int(min(height, np.ceil(y1 + dy)))
    return field[top:bottom, left:right]


def at_edge(box: np.ndarray, width: int, height: int) -> bool:
    """Whether the box touches the field's border: the cell is cut by the edge."""
    x0, y0, x1, y1 = box
    return x0 <= EDGE_PX or y0 <= EDGE_PX or x1 >= width - EDGE_PX or y1 >= height - EDGE_PX


def read_fields(root: str | Path, domain: str | None = None, boxes: str = "given",
                box_dir: str | None = None, margin: float = 0.25,
                aliases: dict[str, str] | None = None, cells_dir: str | Path | None = None,
                **_) -> pd.DataFrame:
    """Manifest rows of the white cells of the fields under ``root`` (see the module).

    Raises
    ------
    ManifestError
        In one line: no domain, an unknown ``boxes``, no field, a field without its box file
        under ``boxes: given``; a malformed box file raises its own :class:`BoxFileError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"fields: folder not found: {root}")
    if not domain:
        raise ManifestError(f"fields {root}: give the source a domain (its lab)")
    if boxes not in BOX_SOURCES:
        raise ManifestError(f"fields {root}: boxes must be one of {list(BOX_SOURCES)}, got "
                            f"{boxes!r}")
    if cells_dir is None:
        raise ValueError("read_fields needs the folder the cells are cut into")
    fields = field_images(root)
    if not fields:
        raise ManifestError(f"fields: no field images under {root}")
    folder = None if box_dir is None else Path(box_dir)
    settings = DetectionSettings()
    bounds = None
    if boxes == "detect":
        bounds = learn_size_bounds(np.concatenate(
            [component_areas(candidate_map(read_rgb(f), settings)) for f in fields]))
        logger.info("fields %s: nuclei of %.0f-%.0f px learnt from %d fields", root,
                    bounds.min_area, bounds.max_area, len(fields))
    out_dir = Path(cells_dir) / domain
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, empty = [], []
    for path in tqdm(fields, desc=f"fields {domain}", unit="field", leave=False):
        image = read_rgb(path)
        height, width = image.shape[:2]
        labels_file = box_file(path, folder)
        if boxes == "given" and labels_file is None:
            raise ManifestError(f"{path}: no box file (<stem>.txt or .xml) beside it or in "
                                f"{folder or path.parent.parent / 'labels'}; use boxes: detect "
                                f"to find the cells")
        given, given_labels = (read_boxes(labels_file, width, height) if labels_file is not None
                               else (np.zeros((0, 4)), []))
        if boxes == "given":
            found = given
        else:
            found, clumps = detect_cells(image, bounds, settings)
            for count, (x0, y0, x1, y1) in clumps:
                logger.warning("%s: about %d touching nuclei in one clump at x %d-%d, y %d-%d, too "
                               "dense to cut into single cells: left out", path, count, x0, x1,
                               y0, y1)
        if not len(found):
            empty.append(path.name)
            continue
        for box, label in zip(found, _labels_of(found, given, given_labels, boxes)):
            crop = cut_cell(image, box, margin)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cell = out_dir / f"{path.stem}__{x0}_{y0}_{x1}_{y1}.png"
            with atomic_path(cell) as tmp:
                Image.fromarray(crop).save(tmp, format="PNG")
            rows.append({"path": str(cell), "domain": domain, "label_raw": label,
                         "label_fine": raw_to_fine(label, "fields", dict(aliases or {})),
                         "mask_path": "", "field": str(path),
                         "box": f"{box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}"})
    if empty:
        logger.warning("fields %s: %d of %d fields hold no white cell (e.g. %s): no row",
                       root, len(empty), len(fields), empty[0])
    logger.info("fields %s: %d white cells in %d fields (%s boxes)", root, len(rows),
                len(fields), boxes)
    return pd.DataFrame(rows, columns=["path", "domain", "label_raw", "label_fine", "mask_path",
                                       "field", "box"])


def _labels_of(found: np.ndarray, given: np.ndarray, given_labels: list[str],
               boxes: str) -> list[str]:
    """Each found box's raw label: its own under ``given``; under ``detect``, that of the given
    box it overlaps most (IoU >= 0.5), or "" (unknown) without one."""
    if boxes == "given":
        return list(given_labels)
    if not len(given):
        return [""] * len(found)
    iou = box_iou(found, given)
    return [given_labels[int(row.argmax())] if row.max() >= 0.5 else "" for row in iou]
