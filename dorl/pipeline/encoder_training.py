"""The cross-domain stage inside ``dorl embed``: which cells the cell encoder trains on, with
which labels (if any), and their crops, then the training itself (:mod:`dorl.cae.train`)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from dorl.atomic import atomic_path
from dorl.cae.settings import CAESettings
from dorl.cae.train import CAEData, TrainResult, train_autoencoder
from dorl.config import ConfigError
from dorl.data.manifest import Manifest
from dorl.distributed import ProcessGroup
from dorl.features.crops import cell_crops
from dorl.features.encode import FEATURE_CHUNK
from dorl.features.resolution import resolution_side
from dorl.row_sources import StoredRows, create_rows
from dorl.sam.segmentation import Segmentation


def training_rows(manifest: Manifest, settings: CAESettings) -> np.ndarray:
    """Manifest rows the autoencoder trains on, by protocol.

    Transductive: every domain takes part (without labels). Inductive: ``cae.target_domains``
    are left out entirely.
    """
    domains = manifest.table["domain"].astype(str).to_numpy()
    targets = list(settings.target_domains)
    if settings.protocol == "transductive":
        return np.arange(len(domains))
    unknown = sorted(set(targets) - set(domains))
    if not targets or unknown:
        raise ConfigError(f"cae.protocol=inductive needs cae.target_domains naming domains of "
                          f"the manifest {sorted(set(domains))}; got {targets}")
    used = np.flatnonzero(~np.isin(domains, targets))
    if not len(used):
        raise ConfigError("cae.target_domains holds out every domain: nothing left to train on")
    return used


def domain_ids(manifest: Manifest) -> np.ndarray:
    """Each row's index into ``manifest.domains``."""
    return manifest.table["domain"].map(
        {d: i for i, d in enumerate(manifest.domains)}).to_numpy()


def trainable_labels(manifest: Manifest, settings: CAESettings) -> np.ndarray:
    """Each row's index into ``settings.classes`` where the encoder may learn its label
    (``cae.label_domains`` under ``cae.supervision=source_labels``), -1 elsewhere (``unknown``
    cells too)."""
    table = manifest.table
    index = {c: i for i, c in enumerate(settings.classes)}
    labels = table["label"].astype(str).map(lambda c: index.get(c, -1)).to_numpy()
    if settings.supervision != "source_labels":
        return np.full(len(table), -1)
    unknown = sorted(set(settings.label_domains) - set(manifest.domains))
    if unknown:
        raise ConfigError(f"cae.label_domains: {unknown} are not domains of the manifest "
                          f"{manifest.domains}")
    return np.where(table["domain"].astype(str).isin(settings.label_domains), labels, -1)


def _training_crops(path: Path, manifest: Manifest, seg: Segmentation, settings: CAESettings,
                    group: ProcessGroup) -> StoredRows:
    """The masked cell crops the encoder trains on, as it embeds them (``features.crop_size``
    and ``features.resolution``), cut once into ``path`` by rank 0 and read batch by batch
    (reused while the segmentation is the same)."""
    side = settings.crop_size
    signature = f"{seg.meta.get('signature')}:{side}:{settings.resolution}"
    if group.is_main and not _store_matches(path, signature):
        path.parent.mkdir(parents=True, exist_ok=True)
        max_side = resolution_side(settings.resolution, manifest, seg)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            crops = create_rows(f, "crops", (len(manifest), side, side, 3), np.uint8)
            for start in tqdm(range(0, len(manifest), FEATURE_CHUNK), desc="CAE crops",
                              unit="chunk"):
                rows = np.arange(start, min(start + FEATURE_CHUNK, len(manifest)))
                crops[rows[0]:rows[-1] + 1] = cell_crops(manifest, seg, side, rows,
                                                         progress=False, max_side=max_side)[0]
            f.attrs["signature"] = signature
    group.barrier()
    return StoredRows(path, "crops")


def _store_matches(path: Path, signature: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("signature", "")) == signature
    except OSError:
        return False


def train_encoder(manifest: Manifest, seg: Segmentation, settings: CAESettings, out_dir: Path,
                  seed: int, device: torch.device, signature: str,
                  group: ProcessGroup = ProcessGroup()) -> TrainResult:
    """Train (or resume, or reuse) the cross-domain autoencoder on the segmented cells, in
    ``out_dir`` (``run_dir/cae``); ``signature`` is what its checkpoints must have been made
    with (:data:`dorl.artifacts.CAE_CHECKPOINT`, from the stage's entry point)."""
    data = CAEData(_training_crops(out_dir / "crops.h5", manifest, seg, settings, group),
                   domain_ids(manifest).astype(np.int64), trainable_labels(manifest, settings),
                   len(settings.classes))
    return train_autoencoder(data, training_rows(manifest, settings), settings, seed, out_dir,
                             device, signature, group)
