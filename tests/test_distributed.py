"""torchrun runs: row blocks per rank, the segmentation store's parts, and a 2-process embed
(gloo on this CPU) against the single-process one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import torch

from dorl.cli import main
from dorl.distributed import ProcessGroup
from dorl.sam.segmentation import Segmentation, SegmentationWriter, join_parts, part_path

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n,world,align", [(72, 2, 16), (100, 3, 16), (5, 4, 1), (10, 2, 128)])
def test_blocks_cover_every_row_once_on_aligned_edges(n, world, align):
    blocks = [ProcessGroup(r, world).block(n, align) for r in range(world)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        assert stop == start and start % align == 0


def _rows(n, offset=0):
    rng = np.random.default_rng(offset)
    return Segmentation(rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
                        rng.random((n, 16, 16)) > 0.5, rng.random((n, 4)).astype(np.float32),
                        rng.random(n) > 0.8, rng.random(n).astype(np.float32),
                        {"sam_pooled": rng.random((n, 5)).astype(np.float32)})


def test_parts_join_into_the_store_in_row_order_and_are_removed(tmp_path):
    out = tmp_path / "segmentation.h5"
    blocks = [_rows(7, 1), _rows(5, 2)]
    for rank, rows in enumerate(blocks):
        part = SegmentationWriter(part_path(out, rank, 2), len(rows), f"sig/{rank}")
        part.write(0, rows)
        part.finish({})
    writer = SegmentationWriter(out, 12, "sig")
    join_parts(writer, [part_path(out, r, 2) for r in range(2)], chunk=3)
    writer.finish({"signature": "sig"})
    joined = Segmentation.load(out)
    np.testing.assert_array_equal(joined.masks, np.concatenate([b.masks for b in blocks]))
    np.testing.assert_array_equal(joined.features["sam_pooled"],
                                  np.concatenate([b.features["sam_pooled"] for b in blocks]))
    assert not any(part_path(out, r, 2).exists() for r in range(2))


def test_an_incomplete_part_is_never_joined(tmp_path):
    out = tmp_path / "segmentation.h5"
    part = SegmentationWriter(part_path(out, 0, 1), 4, "sig/0")
    part.write(0, _rows(2))
    with pytest.raises(ValueError, match="incomplete"):
        join_parts(SegmentationWriter(out, 4, "sig"), [part_path(out, 0, 1)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path) -> list[str]:
    """The tiny embed's config files and its data, prepared once for both runs."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""\
data: {{root: {tmp_path / 'data'}, synth: {{n_per_domain: 8, image_size: 64}}}}
sam:
  backbone: tiny
  image_size: 64
  finetune: {{epochs: 1, batch_size: 8, max_images: 16}}
  infer: {{batch_size: 8, stored_crop_size: 32, bf16: false}}
features: {{crop_size: 32, adabn_cells: 16, bf16: false}}
cae: {{enabled: true, epochs: 2, batch_per_domain: 8}}
""")  # float32: bfloat16's rounding would turn the DDP adapter's last-bit differences into 1e-3
    files = ["-c", str(REPO / "configs" / "default.yaml"), "-c", str(cfg)]
    assert main(["data", "prepare", *files, f"run_dir={tmp_path / 'data_run'}"]) == 0
    return files


def test_two_processes_embed_like_one(tmp_path):
    """One run of each: the ranks segment exactly as one process and train the autoencoder
    together (each on half of every batch: not the same numbers, the same training)."""
    files = _config(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    # The two ranks start (each imports torch and peft) while this process embeds on its own,
    # on one thread like each rank.
    output = tmp_path / "torchrun.out"
    with output.open("w") as out:  # a file, not a pipe: a full pipe would stall the ranks
        ranks = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_port", str(_free_port()), "-m", "dorl", "embed", *files,
             f"run_dir={two}"],
            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out,
            stderr=subprocess.STDOUT)
        threads = torch.get_num_threads()
        try:
            assert main(["embed", *files, f"run_dir={one}", "num_threads=1"]) == 0
        finally:
            torch.set_num_threads(threads)
            ranks.wait(timeout=600)
    assert ranks.returncode == 0, output.read_text()[-3000:]
    with h5py.File(one / "segmentation.h5") as a, h5py.File(two / "segmentation.h5") as b:
        for name in ("masks", "boxes", "fallback", "crops"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
        np.testing.assert_allclose(a["features/sam_pooled"][()], b["features/sam_pooled"][()],
                                   rtol=1e-4, atol=1e-4)
    assert not list(two.glob("segmentation.part*")) and not list(two.glob("cell_features.part*"))
    assert (two / "dorl.rank1.log").is_file()
    x1, x2 = ad.read_h5ad(one / "features.h5ad"), ad.read_h5ad(two / "features.h5ad")
    assert x1.X.shape == x2.X.shape == (x1.n_obs, 1280)
    t1, t2 = x1.uns["cae_training"], x2.uns["cae_training"]
    assert t1["epochs_run"] == t2["epochs_run"] == 2
    assert abs(t2["history"]["total"][-1] / t1["history"]["total"][-1] - 1) < 0.25
    assert (two / "cae" / "encoder.pt").is_file() and not list(two.glob("cae/*.tmp*"))


def test_lazy_store_reads_the_rows_asked_for_in_their_order(tmp_path):
    rows = _rows(6, 3)
    rows.meta = {"signature": "sig"}
    path = rows.save(tmp_path / "segmentation.h5")
    lazy = Segmentation.load(path, lazy=True)
    assert len(lazy) == 6 and lazy.masks.shape == rows.masks.shape
    np.testing.assert_array_equal(lazy.masks[4], rows.masks[4])
    np.testing.assert_array_equal(lazy.crops[1:3], rows.crops[1:3])
    np.testing.assert_array_equal(lazy.masks[[5, 0, 5]], rows.masks[[5, 0, 5]])
    pick = np.array([True, False, True, False, False, True])
    np.testing.assert_array_equal(lazy.crops[pick], rows.crops[pick])
    np.testing.assert_array_equal(lazy.predicted_iou, rows.predicted_iou)
    np.testing.assert_array_equal(np.asarray(lazy.crops, dtype=np.uint8), rows.crops)
    np.testing.assert_array_equal(lazy.boxes, rows.boxes)


def test_cell_feature_parts_join_when_a_rank_got_no_rows(tmp_path):
    from dorl.features.encode import _join_stores

    parts = [tmp_path / "a.h5", tmp_path / "b.h5"]
    with h5py.File(parts[0], "w") as f:  # a rank without rows: provenance, no features
        f.attrs.update(signature="sig", meta_json="{}")
    with h5py.File(parts[1], "w") as f:
        f["efficientnet_lite0"] = np.arange(12, dtype=np.float32).reshape(3, 4)
        f.attrs.update(signature="sig", meta_json="{}")
    _join_stores(tmp_path / "joined.h5", parts, ("efficientnet_lite0",))
    with h5py.File(tmp_path / "joined.h5") as f:
        np.testing.assert_array_equal(f["efficientnet_lite0"][()],
                                      np.arange(12, dtype=np.float32).reshape(3, 4))
        assert f.attrs["signature"] == "sig"
    assert not any(p.exists() for p in parts)
