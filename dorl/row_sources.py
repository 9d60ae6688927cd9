"""Per-cell arrays read, or computed, a block of rows at a time.

A *row source* is anything with ``shape``, ``dtype``, ``len()`` and row indexing (an int, a
slice or an index array) that returns an ndarray: a NumPy array, an ``h5py.Dataset``, or one of
the classes here. The stages hand row sources to each other instead of whole arrays, so that
memory holds a block of cells, not all of them:

* :class:`StoredRows`: one array of an HDF5 file, read when indexed;
* :class:`ConcatenatedRows`: several row sources side by side (``axis=1``);
* :class:`MappedRows`: a function applied to each block read from another source.

:func:`blocks` walks a source in row blocks; :func:`take` reads scattered rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import h5py
import numpy as np

from dorl.write_failures import ensure_room

#: Rows read per block by :func:`blocks` (and by the feature file's writer).
BLOCK_ROWS = 1024
#: Largest HDF5 chunk :func:`chunk_rows` plans for. HDF5 reads whole chunks, so a random row
#: costs a chunk: with 128 crops of 49 KB per chunk, a batch of 48 random crops read 0.23 s
#: against 0.2 ms from memory.
CHUNK_BYTES = 64 * 1024


class RowSource(Protocol):
    """What the stages need of a per-cell array (an ndarray is one)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def __getitem__(self, index) -> np.ndarray: ...


def _rows(index, n: int):
    """``index`` as an int, a slice or a sorted-unique index array with its inverse."""
    if isinstance(index, (int, np.integer, slice)):
        return index, None
    index = np.asarray(index)
    if index.dtype == bool:
        index = np.flatnonzero(index)
    index = index.astype(np.int64)
    if len(index) and (index.min() < -n or index.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    unique, inverse = np.unique(index % max(n, 1), return_inverse=True)
    return unique, inverse


class _Rows:
    """What every row source here shares: its length and ``np.asarray`` (reads every row)."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)


class StoredRows(_Rows):
    """Rows of one array of an HDF5 file, read from disk when indexed.

    ``rows[i]``, ``rows[a:b]`` and ``rows[index_array]`` read only those rows; ``np.asarray(rows)``
    reads them all. The file is opened for each read, so no handle outlives a call.

    Parameters
    ----------
    path : str or Path
    name : str
        The dataset's path inside the file (e.g. ``"crops"`` or ``"features/sam_pooled"``).
    """

    def __init__(self, path: str | Path, name: str):
        self.path, self.name = Path(path), name
        with h5py.File(self.path, "r") as f:
            self.shape, self.dtype = tuple(f[name].shape), f[name].dtype

    def __getitem__(self, index) -> np.ndarray:
        index, inverse = _rows(index, len(self))
        with h5py.File(self.path, "r") as f:
            data = f[self.name]
            if inverse is None:
                return data[index]
            out = np.empty((len(index), *self.shape[1:]), self.dtype)
            # One read per run of consecutive rows: h5py's point selection of scattered rows
            # took 0.2 s for 48 crops, these reads 5 ms.
            breaks = np.flatnonzero(np.diff(index) != 1) + 1
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(index)]):
                if b > a:
                    data.read_direct(out, np.s_[index[a]:index[b - 1] + 1], np.s_[a:b])
            # The rows were read sorted and unique; the inverse restores the order asked for.
            return out[inverse]


class ConcatenatedRows(_Rows):
    """Row sources of the same length side by side: rows of shape (sum of their columns,).

    Parameters
    ----------
    parts : sequence of 2-D row sources
    """

    def __init__(self, parts: Sequence):
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({len(p) for p in parts}) != 1:
            raise ValueError(f"row sources of different lengths: {[len(p) for p in parts]}")
        self.parts = list(parts)
        self.shape = (len(parts[0]), sum(int(p.shape[1]) for p in parts))
        self.dtype = np.result_type(*[p.dtype for p in parts])

    def __getitem__(self, index) -> np.ndarray:
        return np.concatenate([np.asarray(p[index]) for p in self.parts], axis=-1)


class MappedRows(_Rows):
    """``function(block, rows)`` of each block read from ``source``.

    Parameters
    ----------
    source : row source
    function : callable
        ``(block, rows) -> block`` where ``rows`` is the int array of the block's row numbers
        (so that the function can look up per-row values, such as each cell's domain). It must
        keep the number of rows; ``shape`` gives its output's.
    shape : tuple of int
    dtype : numpy dtype
    """

    def __init__(self, source, function: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 shape: tuple[int, ...], dtype):
        self.source, self.function = source, function
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        block = np.asarray(self.source[index])
        if np.ndim(rows) == 0:
            return self.function(block[None], np.atleast_1d(rows))[0]
        return np.asarray(self.function(block, rows), dtype=self.dtype)


def chunk_rows(row_shape: tuple[int, ...], dtype, n_rows: int) -> int:
    """Rows per HDF5 chunk for rows of ``row_shape`` and ``dtype``: as many as fit in
    :data:`CHUNK_BYTES` (at least 1, at most ``n_rows``), so that reading scattered rows (a
    training batch) reads little more than those rows."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return int(max(1, min(n_rows, CHUNK_BYTES // row_bytes)))


def create_rows(group, name: str, shape: tuple[int, ...], dtype):
    """An HDF5 dataset ``name`` of ``shape`` (rows first) and ``dtype`` in ``group`` (an h5py
    file or group), chunked by :func:`chunk_rows`: every per-cell store is planned this way.

    Raises ``OSError`` (ENOSPC) first when the disk lacks room for the whole dataset
    (:func:`dorl.write_failures.ensure_room`: HDF5 itself would not say so).
    """
    shape = tuple(int(s) for s in shape)
    ensure_room(group.file.filename, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return group.create_dataset(name, shape=shape, dtype=dtype,
                                chunks=(chunk_rows(shape[1:], dtype, shape[0]), *shape[1:]))


def blocks(source, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, values)`` for consecutive blocks of ``block_rows`` rows of ``source``."""
    for start in range(0, len(source), block_rows):
        rows = slice(start, min(start + block_rows, len(source)))
        yield rows, np.asarray(source[rows])


def take(source, index) -> np.ndarray:
    """Rows ``index`` of ``source``, read without loading the others."""
    return np.asarray(source[np.asarray(index, dtype=np.int64)])


def part_rows(parts: Sequence[str | Path], names: Sequence[str], chunk: int,
              skip: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(offset, {name: rows})`` blocks of at most ``chunk`` rows over the part stores
    ``parts`` stacked in order, ``offset`` counting rows across all parts; the first ``skip``
    rows are passed over (already joined). A part without ``names[0]`` holds no rows (a rank
    that got none). Both of stage 1's joins (the segmentation store and the cell features)
    read their ranks' parts this way."""
    offset = 0
    for path in parts:
        with h5py.File(path, "r") as f:
            n = f[names[0]].shape[0] if names[0] in f else 0
            for start in range(max(skip - offset, 0), n, chunk):
                stop = min(start + chunk, n)
                yield offset + start, {name: f[name][start:stop] for name in names}
        offset += n
