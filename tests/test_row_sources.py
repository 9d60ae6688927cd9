"""Row sources: per-cell arrays read a block of rows at a time, and the feature file written
from them."""

import h5py
import numpy as np
import pandas as pd
import pytest

from dorl.featstore import FeatureSet, read_features, write_features
from dorl.row_sources import (
    CHUNK_BYTES,
    ConcatenatedRows,
    MappedRows,
    StoredRows,
    blocks,
    create_rows,
    take,
)


@pytest.fixture
def stored(tmp_path):
    values = np.arange(60, dtype=np.float32).reshape(20, 3)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("group/x", data=values, chunks=(4, 3))
    return StoredRows(tmp_path / "a.h5", "group/x"), values


def test_stored_rows_read_only_what_is_indexed(stored):
    rows, values = stored
    assert rows.shape == (20, 3) and len(rows) == 20 and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[3], values[3])
    np.testing.assert_array_equal(rows[2:9], values[2:9])
    # Unsorted, repeated and negative rows come back in the order asked for.
    np.testing.assert_array_equal(rows[np.array([7, 1, 7, -1])], values[[7, 1, 7, -1]])
    np.testing.assert_array_equal(rows[values[:, 0] > 40], values[values[:, 0] > 40])
    np.testing.assert_array_equal(np.asarray(rows), values)
    assert rows[np.array([], int)].shape == (0, 3)
    with pytest.raises(IndexError):
        rows[np.array([20])]


def test_concatenated_and_mapped_rows(stored):
    rows, values = stored
    both = ConcatenatedRows([rows, values[:, :1] * 2])
    assert both.shape == (20, 4)
    np.testing.assert_array_equal(both[[4, 2]], np.hstack([values, values[:, :1] * 2])[[4, 2]])
    with pytest.raises(ValueError, match="different lengths"):
        ConcatenatedRows([rows, values[:5]])
    # The function sees each block's row numbers, as a per-domain standardisation needs.
    offset = np.arange(20.0)[:, None]
    mapped = MappedRows(rows, lambda block, at: block - offset[at], (20, 3), np.float32)
    np.testing.assert_array_equal(mapped[5:9], (values - offset)[5:9])
    np.testing.assert_array_equal(mapped[11], (values - offset)[11])
    np.testing.assert_array_equal(take(mapped, [19, 0]), (values - offset)[[19, 0]])
    joined = np.concatenate([b for _, b in blocks(mapped, 7)])
    np.testing.assert_array_equal(joined, values - offset)


def test_feature_file_written_from_row_sources_equals_one_from_arrays(stored, tmp_path,
                                                                     monkeypatch):
    from dorl import featstore

    rows, values = stored
    obs = pd.DataFrame({"domain": ["a", "b"] * 10, "label": ["x"] * 20},
                       index=[f"c{i}" for i in range(20)])
    monkeypatch.setattr(featstore, "BLOCK_ROWS", 6)  # several blocks, the last one short
    write_features(tmp_path / "lazy.h5ad", FeatureSet(rows, obs, {"X_raw": rows}))
    write_features(tmp_path / "eager.h5ad", FeatureSet(values, obs, {"X_raw": values}))
    lazy, eager = read_features(tmp_path / "lazy.h5ad"), read_features(tmp_path / "eager.h5ad")
    np.testing.assert_array_equal(lazy.X, eager.X)
    np.testing.assert_array_equal(lazy.obsm["X_raw"], eager.obsm["X_raw"])


def test_create_rows_plans_chunks_of_at_most_chunk_bytes(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        chunks = {name: create_rows(f, name, shape, dtype).chunks for name, shape, dtype in (
            ("crops", (1000, 128, 128, 3), np.uint8),  # 49 KB per row
            ("x", (1000, 1280), np.float32),  # 5 KB per row
            ("few", (3, 4), np.float32),
            ("big", (10, 512, 512, 3), np.uint8))}  # one row is more than CHUNK_BYTES
    assert chunks["crops"] == (1, 128, 128, 3)
    assert chunks["x"] == (CHUNK_BYTES // (1280 * 4), 1280)
    assert chunks["few"] == (3, 4) and chunks["big"] == (1, 512, 512, 3)
