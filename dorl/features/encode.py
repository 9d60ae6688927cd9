"""Cell features, the embedding: each configured encoder reads the
segmented cell, not the field.

For every cell, the mask and box that segmentation found are carried back to the original image,
and the masked cell is cut out at its own resolution and scaled to ``features.crop_size``
(:mod:`dorl.features.crops`). Each encoder of ``features.encoders`` turns the crops into pooled
features, with its BatchNorm statistics re-estimated on each domain's cells when
``features.adabn`` is on (:mod:`dorl.features.adabn`). Several encoders are concatenated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dorl.artifacts import CELL_FEATURES, reusable
from dorl.atomic import atomic_path
from dorl.config import ConfigError
from dorl.data.manifest import Manifest
from dorl.device import get_device, resolve_bf16
from dorl.distributed import ProcessGroup, current
from dorl.features.adabn import recalibrate_batchnorm
from dorl.features.crops import cell_crops
from dorl.features.resolution import parse_resolution, resolution_side
from dorl.row_sources import StoredRows, create_rows, part_rows
from dorl.sam.segmentation import Segmentation, part_path

logger = logging.getLogger(__name__)

CELL_FEATURES_FILE = "cell_features.h5"
ENCODERS = ("efficientnet_lite0", "litemedsam")
#: Cells cut and encoded at a time (bounds memory on large datasets).
FEATURE_CHUNK = 256
#: ``features.tta``: how many of the dihedral views of a crop are averaged (1: the crop itself).
TTA_VIEWS = (1, 4, 8)


@dataclass(frozen=True)
class FeatureSettings:
    """What :func:`stream_cell_features` needs, unpacked once from ``cfg.features``."""

    encoders: tuple[str, ...]
    crop_size: int
    adabn: bool
    adabn_cells: int
    batch_size: int
    bf16: bool
    sam_image_size: int
    device: str = "cpu"
    tta: int = 1
    #: ``features.resolution``: "native", "coarsest" or a side in pixels.
    resolution: str | int = "native"
    #: The adapted encoder's weights (:mod:`dorl.cae`); None: the pretrained weights.
    encoder_weights: str | None = None

    @classmethod
    def from_config(cls, cfg) -> "FeatureSettings":
        f = cfg.features
        unknown = sorted(set(f.encoders) - set(ENCODERS))
        if unknown:
            raise ConfigError(f"features.encoders: unknown {unknown}; known: {list(ENCODERS)}")
        if int(f.tta) not in TTA_VIEWS:
            raise ConfigError(f"features.tta must be one of {list(TTA_VIEWS)}, got {f.tta!r}")
        return cls(tuple(str(e) for e in f.encoders), int(f.crop_size), bool(f.adabn),
                   int(f.adabn_cells), int(f.batch_size),
                   resolve_bf16(f.bf16, get_device(cfg.device)), int(cfg.sam.image_size),
                   str(get_device(cfg.device)), int(f.tta), parse_resolution(f.resolution))


class SamCropEncoder(nn.Module):
    """LiteMedSAM's image encoder on cell crops: (B, 3, h, w) 0..255 -> (B, 320) pooled.

    The zero-shot weights, not the LoRA adapter (which is trained for masks, not cell types), with
    BatchNorm kept unfolded so that its statistics can be re-estimated per domain.
    """

    def __init__(self, image_size: int):
        super().__init__()
        from dorl.sam.models import build_sam

        sam = build_sam("litemedsam", "default", image_size, fold=False)
        self.image_size = image_size
        self.encoder = sam.image_encoder
        self.register_buffer("pixel_mean", sam.pixel_mean.clone())
        self.register_buffer("pixel_std", sam.pixel_std.clone())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
        return self.encoder.forward_features((x - self.pixel_mean) / self.pixel_std).mean((2, 3))


def build_encoder(name: str, sam_image_size: int, weights: str | None = None) -> nn.Module:
    """The encoder ``name`` in eval mode; ``weights`` is an EfficientNet-Lite weights file (the
    adapted encoder) instead of the ImageNet weights."""
    if name == "litemedsam":
        return SamCropEncoder(sam_image_size).eval()
    from dorl.features.efficientnet import build_efficientnet_lite

    return build_efficientnet_lite(name, weights or "default")


def _batches(crops: np.ndarray, side: int, batch_size: int, device: torch.device):
    """(B, 3, side, side) float tensors of 0..255 pixels on ``device`` over ``crops``
    (n, s, s, 3) uint8."""
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size]))
        x = x.to(device).permute(0, 3, 1, 2).float()
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                              antialias=True)
        yield x


def recalibrate_on_crops(model: nn.Module, side: int, crops: np.ndarray, batch_size: int,
                         bf16: bool) -> None:
    """AdaBN: re-estimate ``model``'s BatchNorm statistics on ``crops`` (n, s, s, 3) uint8."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        recalibrate_batchnorm(model, _batches(crops, side, batch_size, device))


def dihedral_views(x: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    """The first ``n_views`` of (B, C, H, W): rotations by 0/90/180/270 degrees, then the same
    of the mirror image. A cell has no orientation, so its features should not have one."""
    views = []
    for k in range(n_views):
        v = torch.flip(x, dims=(-1,)) if k >= 4 else x
        views.append(torch.rot90(v, k % 4, dims=(-2, -1)))
    return views


def encode_crops(model: nn.Module, side: int, crops: np.ndarray, domains: np.ndarray,
                 adabn_cells: int, batch_size: int, bf16: bool, tta: int = 1) -> np.ndarray:
    """Pooled features (n, d) float32 of ``crops`` (n, s, s, 3) uint8, domain by domain.

    With ``adabn_cells > 0`` the BatchNorm statistics are first re-estimated on up to that many of
    the domain's crops, spread evenly over its rows (AdaBN); 0 keeps the ImageNet statistics.
    ``tta`` > 1 averages the features of that many :func:`dihedral_views` of each crop.
    """
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {TTA_VIEWS}, got {tta!r}")
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    for domain in np.unique(domains):
        rows = np.flatnonzero(domains == domain)
        if adabn_cells > 0:
            picks = np.linspace(0, len(rows) - 1, min(len(rows), adabn_cells)).astype(int)
            recalibrate_on_crops(model, side, crops[rows[picks]], batch_size, bf16)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = torch.cat([torch.stack([model(v).float() for v in dihedral_views(x, tta)])
                               .mean(0).cpu()
                               for x in _batches(crops[rows], side, batch_size, device)])
        if out is None:
            out = np.empty((len(crops), feats.shape[1]), np.float32)
        out[rows] = feats.numpy()
    return out


def domain_sample(domains: np.ndarray, per_domain: int) -> np.ndarray:
    """Up to ``per_domain`` rows of each domain, spread evenly over its rows (sorted): the cells
    the AdaBN statistics are estimated on."""
    picks = []
    for domain in np.unique(domains):
        rows = np.flatnonzero(domains == domain)
        picks.append(rows[np.linspace(0, len(rows) - 1, min(len(rows), per_domain)).astype(int)])
    return np.sort(np.concatenate(picks)) if picks else np.array([], int)


def stream_cell_features(manifest: Manifest, seg: Segmentation, settings: FeatureSettings,
                         rows: np.ndarray | None = None,
                         allocate: Callable[[str, tuple[int, int]], Any] | None = None
                         ) -> tuple[dict[str, Any], dict]:
    """Every configured encoder's features of the manifest rows ``rows`` (default: all),
    :data:`FEATURE_CHUNK` cells at a time, so that memory holds a chunk of crops, not all of them.

    Each domain's BatchNorm statistics (AdaBN) are estimated first on :func:`domain_sample`
    (``features.adabn_cells`` cells per domain of the whole manifest, so that every rank of a
    distributed run estimates the same); then each domain's cells are cut and encoded chunk by
    chunk.

    Parameters
    ----------
    rows : int ndarray, optional
        Sorted manifest rows to encode; the outputs hold them in this order.
    allocate : callable, optional
        ``(encoder name, (n, d)) -> writable array`` where an encoder's features go, e.g. an
        HDF5 dataset; default: a float32 ndarray in memory.

    Returns
    -------
    features : dict of str -> array of shape (len(rows), d_encoder)
        What ``allocate`` returned, filled.
    meta : dict
        The resampling side, precision, threads and seconds of each step.
    """
    allocate = allocate or (lambda name, shape: np.empty(shape, np.float32))
    domains = manifest.table["domain"].astype(str).to_numpy()
    rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
    timings = {"crops": 0.0, **{name: 0.0 for name in settings.encoders}}
    t0 = time.perf_counter()
    # From the whole manifest, so that every rank of a distributed run resamples the same.
    max_side = resolution_side(settings.resolution, manifest, seg)
    if max_side is not None:
        logger.info("cells resampled through at most %d px across their crop "
                    "(features.resolution=%s)", max_side, settings.resolution)
    sample = domain_sample(domains, settings.adabn_cells)
    sample_crops, _ = cell_crops(manifest, seg, settings.crop_size, sample, progress=False,
                                 max_side=max_side)
    timings["crops"] += time.perf_counter() - t0
    # Every encoder reads the crop at features.crop_size (LiteMedSAM resizes it to its own
    # input); the adapted encoder was trained at that side.
    side = settings.crop_size
    models = {name: build_encoder(name, settings.sam_image_size,
                                  settings.encoder_weights).to(settings.device)
              for name in settings.encoders}
    features: dict[str, Any] = {}
    bar = tqdm(total=len(rows), desc="cell features", unit="img")
    for domain in np.unique(domains[rows]):
        if settings.adabn:
            own = sample_crops[domains[sample] == domain]
            for name, model in models.items():
                t0 = time.perf_counter()
                recalibrate_on_crops(model, side, own, settings.batch_size, settings.bf16)
                timings[name] += time.perf_counter() - t0
        positions = np.flatnonzero(domains[rows] == domain)
        for start in range(0, len(positions), FEATURE_CHUNK):
            at = positions[start:start + FEATURE_CHUNK]
            chunk = rows[at]
            t0 = time.perf_counter()
            crops, _ = cell_crops(manifest, seg, settings.crop_size, chunk, progress=False,
                                  max_side=max_side)
            timings["crops"] += time.perf_counter() - t0
            for name, model in models.items():
                t0 = time.perf_counter()
                feats = encode_crops(model, side, crops, domains[chunk], 0, settings.batch_size,
                                     settings.bf16, settings.tta)
                if name not in features:
                    features[name] = allocate(name, (len(rows), feats.shape[1]))
                # A domain's rows are consecutive in most manifests: one slice write, not a
                # scattered one (which HDF5 does row by row).
                if at[-1] - at[0] + 1 == len(at):
                    features[name][at[0]:at[-1] + 1] = feats
                else:
                    features[name][at] = feats
                timings[name] += time.perf_counter() - t0
            bar.update(len(chunk))
    bar.close()
    for name in settings.encoders:
        logger.info("%s features of %d cells (AdaBN %s, %d views): %.1f s, %.1f img/s",
                    name, len(rows), settings.adabn, settings.tta,
                    timings[name], len(rows) / max(timings[name], 1e-9))
    return features, {"resolution_side": max_side, "bf16": settings.bf16,
                      "torch_threads": torch.get_num_threads(), "timings_s": timings}


def _write_store(path: Path, manifest: Manifest, seg: Segmentation, settings: FeatureSettings,
                 signature: str, rows: np.ndarray | None = None) -> None:
    """Encode ``rows`` into a complete HDF5 store at ``path``, atomically (a run killed here
    leaves no store and encodes again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            def allocate(name, shape):
                return create_rows(f, name, shape, np.float32)

            _, meta = stream_cell_features(manifest, seg, settings, rows, allocate)
            f.attrs.update(signature=signature, meta_json=json.dumps(meta))


def _join_stores(path: Path, parts: list[Path], names: tuple[str, ...]) -> None:
    """Stack the part stores ``parts`` (in row order) into one at ``path``, then delete them.
    The first part's provenance is kept: every rank estimated the same statistics."""
    dims, attrs, total = {}, {}, 0
    for part in parts:  # a rank that got no rows wrote a part without datasets
        with h5py.File(part, "r") as f:
            if names[0] in f:
                total += f[names[0]].shape[0]
                dims = dims or {name: f[name].shape[1] for name in names}
                attrs = attrs or {key: f.attrs[key] for key in ("signature", "meta_json")}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            for name in names:
                create_rows(out, name, (total, dims[name]), np.float32)
            for offset, rows in part_rows(parts, names, FEATURE_CHUNK):
                for name in names:
                    out[name][offset:offset + len(rows[name])] = rows[name]
            out.attrs.update(attrs)
    for part in parts:
        part.unlink()


def _stored(path: Path, signature: str, names: tuple[str, ...]
            ) -> tuple[dict[str, StoredRows], dict] | None:
    """The store at ``path`` as row sources, when it holds ``names`` made with ``signature``."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            found, meta = str(f.attrs.get("signature", "")), str(f.attrs.get("meta_json", "{}"))
            present = all(name in f for name in names)
    except OSError:
        return None
    if not present or not reusable(CELL_FEATURES, path, found, signature):
        return None
    return {name: StoredRows(path, name) for name in names}, json.loads(meta)


def features_from_config(cfg, manifest: Manifest, seg: Segmentation, settings: FeatureSettings,
                         group: ProcessGroup | None = None,
                         encoder_weights: tuple[str | Path, str] | None = None
                         ) -> tuple[dict[str, StoredRows], dict]:
    """Cell features of every manifest row and their provenance (see
    :func:`stream_cell_features`), in ``run_dir/cell_features.h5``; ``encoder_weights`` is the
    adapted encoder's weights file and its SHA-256 (:mod:`dorl.cae`), None for the pretrained
    encoders; ``settings`` as the stage's entry point built them
    (``FeatureSettings.from_config``).

    The store is reused when it was made from the same segmentation and settings. The features
    are returned as row sources (read from the store when indexed), so that memory never holds
    all of them. Under ``torchrun`` every rank encodes its own block of rows into its own part,
    and rank 0 joins them. Empty when ``features.encoders`` is empty.
    """
    if not settings.encoders:
        return {}, {}
    weights_hash = None
    if encoder_weights is not None:
        weights, weights_hash = encoder_weights
        settings = replace(settings, encoder_weights=str(weights))
    group = group or current()
    out = Path(cfg.run_dir) / CELL_FEATURES_FILE
    signature = CELL_FEATURES.signature(cfg, seg.meta.get("signature"), weights_hash)
    names = tuple(settings.encoders)
    stored = _stored(out, signature, names)
    if stored is not None:
        return stored
    if group.distributed:
        start, stop = group.block(len(manifest))
        parts = [part_path(out, r, group.world_size) for r in range(group.world_size)]
        _write_store(parts[group.rank], manifest, seg, settings, signature,
                     np.arange(start, stop))
        group.barrier()
        if group.is_main:
            _join_stores(out, parts, names)
        group.barrier()
    else:
        _write_store(out, manifest, seg, settings, signature)
    logger.info("cell features %s written to %s", list(names), out)
    return _stored(out, signature, names)
