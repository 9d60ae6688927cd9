"""Batched SAM segmentation of single-cell images into masks, masked crops and encoder features.

Each image is resized to SAM's input size, encoded and decoded in batches with the configured
prompt. The predicted mask is cleaned (largest connected component, holes filled); a mask that
is empty, tiny or covers most of the image border is replaced by a centre crop and flagged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dorl.artifacts import SEGMENTATION
from dorl.config import ConfigError
from dorl.data.images import read_rgb
from dorl.data.manifest import Manifest
from dorl.device import get_device, resolve_bf16
from dorl.distributed import ProcessGroup
from dorl.provenance import sha256_file, signature_of
from dorl.resize import resize_image
from dorl.sam.masks import centre_box, clean_mask, is_usable, mask_box, masked_crop
from dorl.sam.segmentation import (
    STORE_FORMAT,
    Segmentation,
    SegmentationWriter,
    join_parts,
    part_path,
    store_state,
)

logger = logging.getLogger(__name__)

SEGMENTATION_FILE = "segmentation.h5"
# Images read into memory at a time by segment_from_config (bounds memory on large datasets).
READ_CHUNK = 128


def predict_masks(model, images: list[np.ndarray], prompt: str, box_fraction: float,
                  batch_size: int, bf16: bool = False, features: str = "pooled",
                  progress: bool = False
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Run the encoder and decoder over ``images`` in batches.

    Parameters
    ----------
    model : dorl.sam.models.CellSAM
    images : list of uint8 ndarray of shape (H_i, W_i, 3)
    prompt : {"none", "center_box", "whole_box"}
    box_fraction : float
    batch_size : int
    bf16 : bool
        Run under bfloat16 autocast (CPU or CUDA); outputs are returned as float32.
    features : {"pooled", "spatial", "none"}
        Encoder features to keep: ``"sam_pooled"`` (n, C); ``spatial`` adds ``"sam_spatial"``
        (n, C, h, w).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    masks : bool ndarray of shape (n, S, S)
        Raw thresholded masks at the model's input size S (not cleaned).
    feats : dict of name -> float32 ndarray
    predicted_iou : float32 ndarray of shape (n,)
        SAM's estimate of each mask's IoU (its IoU head).
    """
    s = model.image_size
    device = model.pixel_mean.device
    masks, pooled, spatial, ious = [], [], [], []
    starts = range(0, len(images), batch_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in tqdm(starts, desc="segment", unit="batch", disable=not progress):
            x = model.preprocess(images[start:start + batch_size])
            out = model.encode(x, return_features=True)
            logits, iou = model.decode(out["embedding"], prompt, box_fraction, return_iou=True)
            logits = logits.float()
            ious.append(iou.float().cpu().numpy())
            if logits.shape[-1] != s:
                logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
            masks.append((logits[:, 0] > 0).cpu().numpy())
            if features != "none":
                pooled.append(out["pooled"].float().cpu().numpy())
            if features == "spatial":
                spatial.append(out["spatial"].float().cpu().numpy())
    feats = {}
    if pooled:
        feats["sam_pooled"] = np.concatenate(pooled).astype(np.float32)
    if spatial:
        feats["sam_spatial"] = np.concatenate(spatial).astype(np.float32)
    return np.concatenate(masks), feats, np.concatenate(ious).astype(np.float32)


@dataclass(frozen=True)
class SegmentSettings:
    """How cells are segmented and cut out, unpacked once from ``sam.prompt``,
    ``sam.box_fraction`` and ``sam.infer``."""

    prompt: str
    box_fraction: float
    batch_size: int
    bf16: bool
    features: str
    stored_crop_size: int
    min_area_frac: float
    max_border_frac: float

    @classmethod
    def from_config(cls, cfg) -> "SegmentSettings":
        infer = cfg.sam.infer
        if int(infer.batch_size) < 1:
            raise ConfigError(f"sam.infer.batch_size must be >= 1, got {infer.batch_size}")
        return cls(str(cfg.sam.prompt), float(cfg.sam.box_fraction), int(infer.batch_size),
                   resolve_bf16(infer.bf16, get_device(cfg.device)), str(infer.features),
                   int(infer.stored_crop_size),
                   float(infer.min_area_frac), float(infer.max_border_frac))


def segment_images(model, images: list[np.ndarray], settings: SegmentSettings,
                   progress: bool = True,
                   masks: list[np.ndarray] | None = None) -> Segmentation:
    """Segment single-cell images in batches and cut out each cell.

    Parameters
    ----------
    model : dorl.sam.models.CellSAM
        In eval mode, with or without a LoRA adapter.
    images : list of uint8 ndarray of shape (H_i, W_i, 3)
    settings : SegmentSettings
    progress : bool
    masks : list of bool ndarray of shape (S, S), optional
        Masks from elsewhere (a classical segmentation, for comparison) used instead of the
        model's; the model then only supplies the features.

    Returns
    -------
    Segmentation
        Crops (n, crop, crop, 3), cleaned masks (n, S, S), boxes, fallback flags, SAM's
        predicted IoU (NaN where ``masks`` replaced SAM's) and ``features`` as chosen by
        ``sam.infer.features``; ``meta`` is left for the caller.
    """
    s, crop = model.image_size, settings.stored_crop_size
    raw_masks, feats, predicted_iou = predict_masks(
        model, images, settings.prompt, settings.box_fraction, settings.batch_size,
        settings.bf16, settings.features, progress)
    if masks is not None:  # SAM's estimate is not about these masks
        raw_masks, predicted_iou = masks, np.full(len(images), np.nan, np.float32)
    n = len(images)
    crops = np.empty((n, crop, crop, 3), np.uint8)
    kept = np.zeros((n, s, s), bool)
    boxes = np.empty((n, 4), np.float32)
    fallback = np.zeros(n, bool)
    for i, image in enumerate(images):
        resized = resize_image(image, s)
        mask = clean_mask(raw_masks[i])
        if is_usable(mask, settings.min_area_frac, settings.max_border_frac):
            kept[i], boxes[i] = mask, mask_box(mask)
            crops[i] = masked_crop(resized, mask, boxes[i], crop)
        else:
            fallback[i] = True
            boxes[i] = centre_box(s, settings.box_fraction)
            crops[i] = masked_crop(resized, None, boxes[i], crop)
    return Segmentation(crops, kept, boxes, fallback, predicted_iou, feats, {})


def adapter_hash(adapter_dir: Path | None) -> str | None:
    """A short hash over the files of an adapter folder (None without an adapter)."""
    if adapter_dir is None:
        return None
    files = sorted(p for p in Path(adapter_dir).iterdir() if p.is_file())
    return signature_of((p.name, sha256_file(p)) for p in files)


def segmentation_signature(cfg, manifest: Manifest, provenance: dict,
                           adapter_dir: Path | None) -> str:
    """The signature of a segmentation (:data:`dorl.artifacts.SEGMENTATION`): its config keys,
    the data, the checkpoint and the adapter's files (which cover fine-tuning)."""
    return SEGMENTATION.signature(cfg, manifest.signature(), provenance.get("checkpoint_sha256"),
                                  adapter_hash(adapter_dir), f"store format {STORE_FORMAT}")


def load_model(cfg, adapter_dir: Path | None):
    """Build the configured SAM on the configured device, with the adapter loaded if given.

    Returns
    -------
    model : dorl.sam.models.CellSAM
        In eval mode.
    provenance : dict
        From :func:`dorl.sam.models.sam_from_config`.
    """
    from dorl.sam.models import sam_from_config

    model, provenance = sam_from_config(cfg)
    if adapter_dir is not None:
        from dorl.sam.lora import load_adapter  # peft is slow to import: only when needed

        load_adapter(model, adapter_dir)
    return model.to(get_device(cfg.device)).eval(), provenance


def _segment_rows(model, manifest: Manifest, offset: int, writer: SegmentationWriter,
                  settings: SegmentSettings, progress: bool) -> None:
    """Segment manifest rows ``offset + writer.done`` to ``offset + writer.n_rows`` into
    ``writer``, :data:`READ_CHUNK` images at a time."""
    with tqdm(total=writer.n_rows, initial=writer.done, desc="segment", unit="img",
              disable=not progress) as bar:
        for start in range(writer.done, writer.n_rows, READ_CHUNK):
            stop = min(start + READ_CHUNK, writer.n_rows)
            images = [read_rgb(manifest.image_path(offset + i)) for i in range(start, stop)]
            writer.write(start, segment_images(model, images, settings, progress=False))
            bar.update(stop - start)


def segment_from_config(cfg, manifest: Manifest, adapter_dir: Path | None,
                        settings: SegmentSettings,
                        group: ProcessGroup = ProcessGroup()) -> Segmentation:
    """Segment every manifest row into ``run_dir/segmentation.h5``, chunk by chunk; a store of
    the same signature is reused when complete and resumed when interrupted.

    Parameters
    ----------
    cfg : DictConfig
    manifest : Manifest
    adapter_dir : Path or None
        A LoRA adapter from :func:`dorl.sam.finetune.finetune_from_config`; None = zero-shot.
    group : ProcessGroup
        Under torchrun, each rank segments its own block of rows into its own part of the store
        (resumed like the store itself), and rank 0 joins the parts.
    settings : SegmentSettings
        As the stage's entry point built them (``SegmentSettings.from_config``).

    Returns
    -------
    Segmentation
        Rows aligned with the manifest; ``meta`` holds the provenance and ``signature``.
    """
    out = Path(cfg.run_dir) / SEGMENTATION_FILE
    model, provenance = load_model(cfg, adapter_dir)
    signature = segmentation_signature(cfg, manifest, provenance, adapter_dir)
    writer = SegmentationWriter(out, len(manifest), signature) if group.is_main else None
    group.barrier()
    done, complete = store_state(out, signature)
    if complete:
        return Segmentation.load(out, lazy=True)
    meta = {**provenance, "adapter": None if adapter_dir is None else str(adapter_dir),
            "adapter_hash": adapter_hash(adapter_dir), "prompt": settings.prompt,
            "box_fraction": settings.box_fraction,
            "stored_crop_size": settings.stored_crop_size, "bf16": settings.bf16,
            "signature": signature}
    if group.distributed and done < len(manifest):
        # Blocks fall on batch edges, and READ_CHUNK must be a multiple of the batch size: every
        # batch then holds the rows it holds in one process.
        if READ_CHUNK % settings.batch_size:
            raise ConfigError(f"under torchrun sam.infer.batch_size must divide {READ_CHUNK}, "
                              f"got {settings.batch_size}")
        start, stop = group.block(len(manifest), align=settings.batch_size)
        part = SegmentationWriter(part_path(out, group.rank, group.world_size), stop - start,
                                  f"{signature}/rows {start}:{stop}")
        _segment_rows(model, manifest, start, part, settings, progress=group.is_main)
        part.finish(meta)
        group.barrier()
        if group.is_main:
            join_parts(writer, [part_path(out, r, group.world_size)
                                for r in range(group.world_size)])
    elif not group.distributed:
        _segment_rows(model, manifest, 0, writer, settings, progress=True)
    if group.is_main:
        with h5py.File(out, "r") as f:  # only the small per-cell flags, not the crops
            fallback = f["fallback"][()]
        domains = manifest.table["domain"].to_numpy()
        per_domain = {d: int(fallback[domains == d].sum()) for d in manifest.domains}
        for domain, count in per_domain.items():
            level = logging.WARNING if count > 0.2 * (domains == domain).sum() else logging.INFO
            logger.log(level, "domain %s: %d of %d cells fell back to a centre crop", domain,
                       count, int((domains == domain).sum()))
        writer.finish({**meta, "fallback_per_domain": per_domain})
        logger.info("segmentation of %d cells written to %s", len(manifest), out)
    group.barrier()
    return Segmentation.load(out, lazy=True)
