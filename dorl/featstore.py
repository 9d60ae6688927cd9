"""The feature file: embeddings plus per-cell metadata and provenance, as an AnnData ``.h5ad``.

Written with plain h5py in the AnnData on-disk layout, so ``anndata.read_h5ad`` (and scanpy,
cellxgene, R's zellkonverter) opens it, yet dorl does not need anndata installed:

* ``X``: float32 (n_cells, n_features), the embeddings;
* ``obs``: one row per cell: ``path, domain, label, label_raw, label_fine, split, group,
  seg_fallback`` (categoricals for the label-like columns), indexed by ``cell_id``;
* ``var``: feature names;
* ``obsm``: other per-cell feature sets (raw SAM features, UMAP coordinates, ...);
* ``uns``: provenance: ``signature`` (what must match for reuse), resolved config, versions,
  checkpoint hashes, protocol, label order.

Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import hashlib

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd

from dorl.atomic import atomic_path
from dorl.errors import InputError
from dorl.row_sources import BLOCK_ROWS, blocks
from dorl.write_failures import ensure_room

logger = logging.getLogger(__name__)

CATEGORICAL = ("domain", "label", "label_raw", "label_fine", "split")
OBS_COLUMNS = ("path", "domain", "label", "label_raw", "label_fine", "split", "group",
               "field", "box", "seg_fallback")
_STR = h5py.string_dtype("utf-8")


class FeatureFileError(InputError, ValueError):
    """A feature file is missing, malformed, or was made by another config or dataset."""


@dataclass
class FeatureSet:
    """Embeddings with their per-cell metadata.

    Attributes
    ----------
    X : ndarray of shape (n_cells, n_features), float32, or a row source
    obs : DataFrame with one row per cell (see ``OBS_COLUMNS``), index = cell ids
    obsm : dict of name -> ndarray of shape (n_cells, ...), or a row source
        A row source (:mod:`dorl.row_sources`) is read a block of rows at a time when the file
        is written, so that a feature file larger than memory can be written.
    uns : nested dict of provenance (str, numbers, lists, dicts)
    var_names : list of str, one per feature
    """

    X: np.ndarray
    obs: pd.DataFrame
    obsm: dict[str, np.ndarray] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    var_names: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.X, (np.ndarray, list)):
            self.X = np.asarray(self.X, dtype=np.float32)
        if len(self.X.shape) != 2:
            raise FeatureFileError(f"X must be 2-D (cells, features), got shape {self.X.shape}")
        if len(self.obs) != self.X.shape[0]:
            raise FeatureFileError(f"obs has {len(self.obs)} rows but X has {self.X.shape[0]}")
        for key, arr in self.obsm.items():
            if len(arr) != self.X.shape[0]:
                raise FeatureFileError(f"obsm[{key!r}] has {len(arr)} rows, "
                                       f"X has {self.X.shape[0]}")
        if self.var_names is None:
            self.var_names = [f"z{i:03d}" for i in range(self.X.shape[1])]

    @property
    def labels(self) -> np.ndarray:
        """Unified labels as a str array."""
        return self.obs["label"].astype(str).to_numpy()

    @property
    def domains(self) -> np.ndarray:
        """Domain names as a str array."""
        return self.obs["domain"].astype(str).to_numpy()

    def features(self, key: str | None = None) -> np.ndarray:
        """``X`` (key None or ``"X"``) or ``obsm[key]`` flattened to (n_cells, n_features)."""
        if key in (None, "X"):
            return np.asarray(self.X, dtype=np.float32)
        if key not in self.obsm:
            raise FeatureFileError(f"no obsm[{key!r}]; available: {sorted(self.obsm)}")
        arr = np.asarray(self.obsm[key])
        return arr.reshape(len(arr), -1).astype(np.float32)


    def embedding_sha256(self, key: str | None = None) -> str:
        """The SHA-256 of one embedding (:meth:`features` of ``key``, float32) and its cell ids.

        Saved models record it rather than the file's hash: ``dorl umap`` adds
        ``obsm["X_umap"]`` to the file afterwards, which changes the file, not the embedding.
        """
        digest = hashlib.sha256(np.ascontiguousarray(self.features(key)).tobytes())
        digest.update("\n".join(map(str, self.obs.index)).encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


# --------------------------------------------------------------------------------- writing
def cell_paths(obs: pd.DataFrame) -> np.ndarray:
    """Each cell's image path as a str array: ``obs["path"]``, or the cell id (the index) in a
    file without that column. The explorer, ``umap.csv`` and the user's labels name cells so."""
    return (obs["path"] if "path" in obs else obs.index.to_series()).astype(str).to_numpy()


def _enc(obj: h5py.HLObject, kind: str, version: str) -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


def _write_strings(group: h5py.Group, name: str, values) -> None:
    ds = group.create_dataset(name, data=np.array([str(v) for v in values], dtype=object),
                              dtype=_STR)
    _enc(ds, "string-array", "0.2.0")


def _write_categorical(group: h5py.Group, name: str, values: pd.Series) -> None:
    cat = pd.Categorical(values.astype(str))
    sub = group.create_group(name)
    _enc(sub, "categorical", "0.2.0")
    sub.attrs["ordered"] = False
    codes = sub.create_dataset("codes", data=cat.codes.astype(np.int32))
    _enc(codes, "array", "0.2.0")
    _write_strings(sub, "categories", cat.categories)


def _write_dataframe(group: h5py.Group, df: pd.DataFrame, index_name: str) -> None:
    _enc(group, "dataframe", "0.2.0")
    group.attrs["_index"] = index_name
    group.attrs.create("column-order", np.array(list(df.columns), dtype=object), dtype=_STR)
    _write_strings(group, index_name, df.index)
    for col in df.columns:
        series = df[col]
        if col in CATEGORICAL:
            _write_categorical(group, col, series)
        elif series.dtype == bool or pd.api.types.is_numeric_dtype(series):
            ds = group.create_dataset(col, data=series.to_numpy())
            _enc(ds, "array", "0.2.0")
        else:
            _write_strings(group, col, series)


def _write_array(group: h5py.Group, name: str, arr, dtype=None) -> None:
    """Write an ndarray, or a row source block by block (:func:`dorl.row_sources.blocks`)."""
    if isinstance(arr, np.ndarray) or not hasattr(arr, "__getitem__") or not hasattr(arr, "shape"):
        arr = np.asarray(arr, dtype=dtype)
        rows = len(arr) if arr.ndim else 0
        chunks = (min(rows, BLOCK_ROWS),) + arr.shape[1:] if rows else None
        ds = group.create_dataset(name, data=arr, chunks=chunks)
    else:
        shape = tuple(arr.shape)
        ds = group.create_dataset(name, shape=shape, dtype=dtype or arr.dtype,
                                  chunks=(max(1, min(shape[0], BLOCK_ROWS)),) + shape[1:])
        for rows, values in blocks(arr, BLOCK_ROWS):
            ds[rows] = values
    _enc(ds, "array", "0.2.0")


def _write_uns(group: h5py.Group, mapping: Mapping[str, Any]) -> None:
    _enc(group, "dict", "0.1.0")
    for key, value in mapping.items():
        key = str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            _write_uns(group.create_group(key), value)
        elif isinstance(value, str):
            ds = group.create_dataset(key, data=value, dtype=_STR)
            _enc(ds, "string", "0.2.0")
        elif isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
            ds = group.create_dataset(key, data=value)
            _enc(ds, "numeric-scalar", "0.2.0")
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and value:
            _write_strings(group, key, value)
        else:
            _write_array(group, key, np.asarray(value))


def write_features(path: str | Path, fs: FeatureSet) -> Path:
    """Write ``fs`` to ``path`` (``.h5ad``) atomically and return the path."""
    path = Path(path)
    obs = fs.obs.copy()
    obs.index = obs.index.astype(str)
    if obs.index.has_duplicates:
        raise FeatureFileError(f"{path}: duplicate cell ids in obs index")
    # HDF5 does not report a full disk (dorl.write_failures): check for the arrays' room first.
    ensure_room(path, sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                          for a in (fs.X, *fs.obsm.values())))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _enc(f, "anndata", "0.1.0")
            _write_array(f, "X", fs.X, np.float32)
            _write_dataframe(f.create_group("obs"), obs, "cell_id")
            _write_dataframe(f.create_group("var"), pd.DataFrame(index=list(fs.var_names)),
                             "feature")
            obsm = f.create_group("obsm")
            _enc(obsm, "dict", "0.1.0")
            for key, arr in fs.obsm.items():
                _write_array(obsm, key, arr)
            for name in ("varm", "obsp", "varp", "layers"):
                _enc(f.create_group(name), "dict", "0.1.0")
            _write_uns(f.create_group("uns"), fs.uns)
    logger.info("wrote %s: %d cells x %d features, obsm %s", path, fs.X.shape[0], fs.X.shape[1],
                sorted(fs.obsm))
    return path


# --------------------------------------------------------------------------------- reading
def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _read_column(obj) -> np.ndarray:
    if isinstance(obj, h5py.Group):  # categorical
        cats = _decode(obj["categories"][()])
        codes = obj["codes"][()]
        out = np.empty(len(codes), dtype=object)
        out[:] = [cats[c] if c >= 0 else "" for c in codes]
        return out
    data = obj[()]
    if obj.attrs.get("encoding-type") == "string-array":
        return _decode(data)
    return data


def _read_uns(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, obj in group.items():
        if isinstance(obj, h5py.Group):
            out[key] = _read_uns(obj)
            continue
        kind = obj.attrs.get("encoding-type", "")
        value = obj[()]
        if kind == "string":
            out[key] = value.decode() if isinstance(value, bytes) else str(value)
        elif kind == "string-array":
            out[key] = list(_decode(value))
        elif kind == "numeric-scalar":
            out[key] = value.item()
        else:
            out[key] = value
    return out


def read_features(path: str | Path, obsm: bool = True) -> FeatureSet:
    """Read a feature file written by :func:`write_features` (or any dense-X ``.h5ad``).

    Parameters
    ----------
    path : str or Path
    obsm : bool, default=True
        Load the ``obsm`` arrays too (they can be much larger than ``X``).
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"feature file not found: {path} (run `make embed` first)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("encoding-type") != "anndata" or "X" not in f or "obs" not in f:
                raise FeatureFileError(f"{path}: not an AnnData .h5ad feature file "
                                       f"(needs X, obs and encoding-type=anndata)")
            if isinstance(f["X"], h5py.Group):
                raise FeatureFileError(f"{path}: sparse X is not supported; store dense embeddings")
            X = f["X"][()]
            g = f["obs"]
            index_name = g.attrs.get("_index", "_index")
            order = [str(c) for c in g.attrs.get("column-order", [])]
            obs = pd.DataFrame({c: _read_column(g[c]) for c in order},
                               index=pd.Index(_read_column(g[index_name]), name="cell_id"))
            var_g = f["var"] if "var" in f else None
            var_names = (list(_read_column(var_g[var_g.attrs.get("_index", "_index")]))
                         if var_g is not None else None)
            obsm_d = ({k: v[()] for k, v in f["obsm"].items()}
                      if obsm and "obsm" in f else {})
            uns = _read_uns(f["uns"]) if "uns" in f else {}
    except OSError as exc:
        raise FeatureFileError(f"{path}: cannot open as HDF5 ({exc})") from exc
    for col in ("domain", "label"):
        if col not in obs.columns:
            raise FeatureFileError(f"{path}: obs has no {col!r} column")
    if not np.isfinite(X).all():
        raise FeatureFileError(f"{path}: X holds NaN or infinite values")
    return FeatureSet(X, obs, obsm_d, uns, var_names)


def stored_signature(path: str | Path) -> dict[str, Any] | None:
    """The ``uns/signature`` of the feature file at ``path``; None when there is no file, an
    empty dict when it has no signature."""
    path = Path(path)
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        return dict(_read_uns(f["uns/signature"])) if "uns/signature" in f else {}


def add_obsm(path: str | Path, key: str, values: np.ndarray) -> None:
    """Store ``values`` as ``obsm[key]`` in an existing feature file (atomic copy-and-rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        shutil.copy2(path, tmp)
        with h5py.File(tmp, "a") as f:
            n = f["X"].shape[0]
            if len(values) != n:
                raise FeatureFileError(f"{path}: obsm[{key!r}] has {len(values)} rows, X has {n}")
            if key in f["obsm"]:
                del f["obsm"][key]
            _write_array(f["obsm"], key, np.asarray(values))
