"""The segmentation result handed from the LoRA-SAM stage to the cell features, and its
on-disk store.

The store is one HDF5 file, written chunk by chunk as segmentation goes
(:class:`SegmentationWriter`): its ``done`` attribute counts the rows on disk and is raised only
after a chunk's rows are flushed, so an interrupted run resumes from the last completed chunk
and a half-written chunk is never read as complete. A file cut off mid-write (unreadable) is
started again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dorl.artifacts import SEGMENTATION, reusable
from dorl.atomic import atomic_path
from dorl.row_sources import StoredRows, create_rows, part_rows
from dorl.write_failures import StoreWriteError, describe, ensure_room, write_failure

logger = logging.getLogger(__name__)

_ARRAYS = ("crops", "masks", "boxes", "fallback", "predicted_iou")
#: The per-cell images, left on disk by ``Segmentation.load(lazy=True)``, with the features.
_LAZY = ("crops", "masks")
#: Raised when the store's layout changes, so that an older store is segmented again rather
#: than read without a column (part of the segmentation signature).
STORE_FORMAT = 2


@dataclass
class Segmentation:
    """Per-cell outputs of batched SAM segmentation, aligned with the manifest rows.

    Attributes
    ----------
    crops : uint8 ndarray of shape (n, crop, crop, 3)
        The cell cut out by its mask, on a neutral grey (128) background, cropped to the mask's
        bounding box with a margin and resized to ``crop`` px (quality control).
    masks : bool ndarray of shape (n, m, m)
        The cell mask (largest component, holes filled) at SAM's input resolution.
    boxes : float32 ndarray of shape (n, 4)
        Mask bounding boxes (x0, y0, x1, y1) in the mask's pixel grid.
    fallback : bool ndarray of shape (n,)
        True where the mask was empty, tiny or touched most of the border, so a centre crop
        was used instead.
    predicted_iou : float32 ndarray of shape (n,)
        SAM's own estimate of the mask's IoU with the cell (its IoU head; quality control).
    features : dict of name -> float32 ndarray of shape (n, ...)
        Encoder features, e.g. ``"sam_pooled"`` (n, C) and optionally ``"sam_spatial"``
        (n, C, h, w).
    meta : dict
        Provenance: backbone, checkpoint hash, adapter hash, image size, prompt mode, signature.
    """

    crops: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    fallback: np.ndarray
    predicted_iou: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.crops)

    def save(self, path: str | Path) -> Path:
        """Write the whole segmentation as one complete HDF5 store, atomically."""
        with atomic_path(path) as tmp:
            writer = SegmentationWriter(tmp, len(self), str(self.meta.get("signature", "")))
            writer.write(0, self)
            writer.finish(self.meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, lazy: bool = False) -> "Segmentation":
        """Read a complete store written by :meth:`save` or :class:`SegmentationWriter`.

        With ``lazy``, the crops, raw crops, masks and features stay on disk
        (:class:`~dorl.row_sources.StoredRows`, read when indexed); boxes and flags are read
        into memory either way.

        Raises
        ------
        ValueError
            When the store is incomplete (an interrupted run: segment again to resume).
        """
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise ValueError(f"{path}: segmentation store is incomplete ({f.attrs['done']} "
                                 f"of {f.attrs['n_rows']} rows); segment again to resume")
            arrays = [StoredRows(path, k) if lazy and k in _LAZY else f[k][()] for k in _ARRAYS]
            names = list(f["features"]) if "features" in f else []
            feats = {k: StoredRows(path, f"features/{k}") if lazy else f["features"][k][()]
                     for k in names}
            return cls(*arrays, feats, json.loads(str(f.attrs["meta_json"])))


class SegmentationWriter:
    """Write a segmentation of ``n_rows`` cells chunk by chunk into an HDF5 store.

    Opening a store of the same ``signature`` and size resumes it: :attr:`done` rows are already
    on disk. A store of another signature, or one that cannot be read, is started again.

    Parameters
    ----------
    path : str or Path
    n_rows : int
    signature : str
        What the store must have been made with to be resumed (config, data, adapter).

    Attributes
    ----------
    done : int
        Rows written and flushed; the next chunk starts there.
    complete : bool
        Whether :meth:`finish` has run (the store is a finished segmentation).
    """

    def __init__(self, path: str | Path, n_rows: int, signature: str):
        self.path, self.n_rows, self.signature = Path(path), int(n_rows), str(signature)
        self.done, self.complete = 0, False
        if self.path.is_file() and self._resume():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "w") as f:
            f.attrs.update(signature=self.signature, n_rows=self.n_rows, done=0, complete=False)

    def _resume(self) -> bool:
        try:
            with h5py.File(self.path, "r") as f:
                found = str(f.attrs.get("signature", ""))
                n_rows = int(f.attrs.get("n_rows", -1))
                done, complete = int(f.attrs.get("done", 0)), bool(f.attrs.get("complete", False))
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("%s cannot be read (%s), probably cut off mid-write: segmenting "
                           "from the start", self.path, exc)
            self.path.unlink()
            return False
        if not reusable(SEGMENTATION, self.path, found, self.signature) or n_rows != self.n_rows:
            return False
        self.done, self.complete = done, complete
        if not complete:
            logger.info("resuming segmentation from %s: %d of %d cells done", self.path, done,
                        self.n_rows)
        return True

    def write(self, start: int, part: Segmentation) -> None:
        """Store ``part``'s rows at ``start``, then mark them done."""
        stop = start + len(part)
        if start != self.done or stop > self.n_rows:
            raise ValueError(f"{self.path}: rows {start}:{stop} do not follow the {self.done} "
                             f"done of {self.n_rows}")
        columns = {k: getattr(part, k) for k in _ARRAYS}
        columns.update({f"features/{k}": v for k, v in part.features.items()})
        try:
            ensure_room(self.path, sum(np.asarray(v).nbytes for v in columns.values()))
            with h5py.File(self.path, "a") as f:
                for name, values in columns.items():
                    values = np.asarray(values)
                    if name not in f:
                        create_rows(f, name, (self.n_rows, *values.shape[1:]), values.dtype)
                    f[name][start:stop] = values
                f.flush()  # the rows are on disk before they are counted
                f.attrs["done"] = stop
        except OSError as exc:
            if write_failure(exc) is None:
                raise
            raise StoreWriteError(
                f"cannot write {describe(exc, self.path)}; {self.done} of {self.n_rows} cells are "
                f"stored in {self.path}: the same command resumes from there where the disk has "
                f"room"
            ) from exc
        self.done = stop

    def finish(self, meta: dict[str, Any]) -> None:
        """Record the provenance and mark the store complete."""
        if self.done != self.n_rows:
            raise ValueError(f"{self.path}: {self.done} of {self.n_rows} rows written")
        with h5py.File(self.path, "a") as f:
            f.attrs["meta_json"] = json.dumps(meta, default=str)
            f.attrs["complete"] = True
        self.complete = True


def store_state(path: str | Path, signature: str) -> tuple[int, bool]:
    """``(done, complete)`` of the store at ``path`` if it was made with ``signature``, else
    ``(0, False)``. Read-only: any rank may ask."""
    try:
        with h5py.File(path, "r") as f:
            if str(f.attrs.get("signature", "")) != str(signature):
                return 0, False
            return int(f.attrs.get("done", 0)), bool(f.attrs.get("complete", False))
    except (OSError, KeyError, ValueError):
        return 0, False


def part_path(path: str | Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its block of the store at ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part{rank}of{world_size}{path.suffix}")


def join_parts(writer: SegmentationWriter, parts: list[Path], chunk: int = 256) -> None:
    """Copy the finished part stores ``parts`` (in row order) into ``writer``, ``chunk`` rows at
    a time, then delete them. Parts already copied (``writer.done`` covers them) are skipped, so
    an interrupted join resumes."""
    features: list[str] = []
    for path in parts:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise ValueError(f"{path}: part of the segmentation store is incomplete")
            if "features" in f and not features:  # a rank without rows stored none
                features = [f"features/{k}" for k in f["features"]]
    for offset, rows in part_rows(parts, [*_ARRAYS, *features], chunk, skip=writer.done):
        writer.write(offset, Segmentation(*(rows[k] for k in _ARRAYS),
                                          {k.split("/", 1)[1]: rows[k] for k in features}))
    if writer.done != writer.n_rows:
        raise ValueError(f"{writer.path}: the parts hold {writer.done} of {writer.n_rows} rows")
    for path in parts:
        path.unlink()
