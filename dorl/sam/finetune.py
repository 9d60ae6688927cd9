"""LoRA fine-tuning of SAM on single-cell masks (no class labels involved).

The images and masks are :mod:`dorl.sam.finetune_data`'s. The loss is 0.2 CE + 0.8 Dice on the
low-resolution logits; AdamW with linear warm-up then cosine decay; the epoch with the best
validation Dice is the adapter kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from dorl.artifacts import ADAPTER, reusable
from dorl.atomic import write_text_atomic
from dorl.config import ConfigError
from dorl.data.manifest import Manifest
from dorl.distributed import ProcessGroup
from dorl.lr_schedule import warmup_cosine, warmup_steps
from dorl.sam.augment import augment_batch
from dorl.sam.finetune_data import training_set

logger = logging.getLogger(__name__)

ADAPTER_DIR = "sam_adapter"
SIGNATURE_FILE = "signature.json"
LOG_FILE = "train_log.json"


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 0.2,
                      dice_weight: float = 0.8, eps: float = 1e-5) -> torch.Tensor:
    """Weighted cross-entropy plus soft Dice, on logits at their own (low) resolution.

    Parameters
    ----------
    logits : float tensor of shape (B, 1, h, w)
    target : bool or float tensor of shape (B, H, W)
        Resized to (h, w) by nearest neighbour.
    ce_weight, dice_weight : float
    eps : float

    Returns
    -------
    scalar tensor
        The Dice term averages the foreground and background classes over the whole batch.
    """
    t = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")
    ce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits)
    fg = (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    bg = (2 * ((1 - p) * (1 - t)).sum() + eps) / ((1 - p).sum() + (1 - t).sum() + eps)
    return ce_weight * ce + dice_weight * (1 - (fg + bg) / 2)


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice (B,) of logits > 0 against a (B, H, W) mask resized to the logits."""
    t = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest") > 0.5
    p = logits > 0
    inter = (p & t).sum(dim=(1, 2, 3)).float()
    total = (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def validate(model, loader, prompt: str, box_fraction: float, ce_weight: float,
             dice_weight: float, zooms: tuple[float, ...] = (1.0,)) -> dict:
    """Mean loss and mean per-image Dice of ``model`` over ``loader``, at each zoom.

    Every validation image is scored as it is and zoomed about its centre by each of ``zooms``
    (no other augmentation), so that the checkpoint chosen segments cells of every size labs
    crop them at. ``val_loss`` and ``val_dice`` average over the zooms; ``val_dice_x<zoom>``
    keeps each one.
    """
    model.eval()
    losses, dices = [], {z: [] for z in zooms}
    device = model.pixel_mean.device
    with torch.inference_mode():
        for images, masks in loader:
            for zoom in zooms:
                if zoom != 1.0:
                    images_z, masks_z = augment_batch(images, masks, {"scale": [zoom, zoom]},
                                                      torch.Generator())
                else:
                    images_z, masks_z = images, masks
                masks_z = masks_z.to(device)
                logits = model(images_z.to(device), prompt, box_fraction)
                losses.append(float(segmentation_loss(logits, masks_z, ce_weight, dice_weight)))
                dices[zoom].append(_batch_dice(logits, masks_z).cpu())
    per_zoom = {z: float(torch.cat(d).mean()) for z, d in dices.items()}
    record = {"val_loss": float(np.mean(losses)),
              "val_dice": float(np.mean(list(per_zoom.values())))}
    if len(zooms) > 1:
        record.update({f"val_dice_x{z:g}": d for z, d in per_zoom.items()})
    return record


def _save_atomically(model, out_dir: Path) -> None:
    """Write the adapter to a temporary sibling folder, then swap it in for ``out_dir``."""
    from dorl.sam.lora import save_adapter

    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_adapter(model, tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def finetune(model, train_loader, val_loader, *, epochs: int, lr: float, weight_decay: float,
             warmup_epochs: float, prompt: str, box_fraction: float, out_dir: str | Path,
             ce_weight: float = 0.2,
             dice_weight: float = 0.8, augment=None, val_zooms: tuple[float, ...] = (1.0,),
             seed: int = 0, group: ProcessGroup = ProcessGroup()) -> dict:
    """Train the trainable parameters of a LoRA-wrapped SAM and keep the best epoch's adapter.

    Parameters
    ----------
    model : dorl.sam.models.CellSAM
        With LoRA added (:func:`dorl.sam.lora.add_lora`).
    train_loader, val_loader : iterable of (images, masks)
        Batches of uint8 images (B, S, S, 3) and bool masks (B, S, S). ``val_loader`` may be
        None, in which case the last epoch is kept.
    epochs, lr, weight_decay, warmup_epochs : int, float, float, float
        AdamW with a per-step linear warm-up over ``warmup_epochs``, then cosine decay.
    prompt, box_fraction : str, float
        The prompt the model is trained (and later run) with.
    out_dir : str or Path
        The adapter folder, rewritten whenever validation Dice improves.
    ce_weight, dice_weight : float
    augment : mapping, optional
        ``sam.finetune.augment``; None trains on the images as they are.
    val_zooms : tuple of float
        Zooms the validation images are scored at (:func:`validate`).
    seed : int
        Seeds the augmentation draws.
    group : ProcessGroup
        Under torchrun every rank draws the same batches and augmentation, trains on its slice
        of each batch, and DistributedDataParallel averages the gradients; rank 0 saves the
        adapter. Every rank validates on the whole validation set, so all keep the same epoch.

    Returns
    -------
    dict
        ``history`` (list of epoch records), ``best_epoch`` and ``best_val_dice``.
    """
    out_dir = Path(out_dir)
    device = model.pixel_mean.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; call dorl.sam.lora.add_lora first")
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    trained = model
    if group.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # Some trainable parts (the prompt modes not in use, the IoU head) get no gradient.
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    generator = torch.Generator().manual_seed(int(seed))
    steps_per_epoch = max(len(train_loader), 1)
    warmup = warmup_steps(warmup_epochs, steps_per_epoch)
    history, best = [], {"best_epoch": None, "best_val_dice": -1.0}
    for epoch in range(epochs):
        model.train()
        start, losses = time.perf_counter(), []
        bar = tqdm(train_loader, desc=f"finetune epoch {epoch + 1}/{epochs}", unit="batch",
                   leave=False, disable=not group.is_main)
        for step, (images, masks) in enumerate(bar):
            if augment is not None:
                images, masks = augment_batch(images, masks, augment, generator)
            factor = warmup_cosine(epoch * steps_per_epoch + step, epochs * steps_per_epoch,
                                   warmup)
            for param_group in optimiser.param_groups:
                param_group["lr"] = lr * factor
            images, masks, weight = _rank_slice(images, masks, group)
            logits = trained(images.to(device), prompt, box_fraction)
            loss = weight * segmentation_loss(logits, masks.to(device), ce_weight, dice_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_loss = float(np.mean(losses))
        if group.distributed:  # the mean over every rank's slice, as one process reports it
            total = torch.tensor([train_loss / group.world_size], dtype=torch.float64)
            torch.distributed.all_reduce(total)
            train_loss = float(total)
        record = {"epoch": epoch + 1, "train_loss": train_loss,
                  "lr": lr * factor}
        if val_loader is not None:
            record.update(validate(model, val_loader, prompt, box_fraction, ce_weight,
                                   dice_weight, tuple(val_zooms)))
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        logger.info("finetune epoch %d/%d: %s", epoch + 1, epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        score = record.get("val_dice", float(epoch))
        if score > best["best_val_dice"]:
            best = {"best_epoch": epoch + 1, "best_val_dice": score}
            if group.is_main:
                _save_atomically(model, out_dir)
    if val_loader is None:
        best["best_val_dice"] = None
    return {"history": history, **best}


def _rank_slice(images: torch.Tensor, masks: torch.Tensor, group: ProcessGroup
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's block of a batch and the weight of its loss. A rank whose block is empty (a
    last batch smaller than the group) trains on the batch's last image with weight 0, so that
    every rank still joins the gradient exchange."""
    if not group.distributed:
        return images, masks, 1.0
    start, stop = group.block(len(images))
    if start == stop:
        return images[-1:], masks[-1:], 0.0
    return images[start:stop], masks[start:stop], 1.0


def finetune_signature(cfg, manifest: Manifest, provenance: dict) -> str:
    """The signature an adapter is reused under (:data:`dorl.artifacts.ADAPTER`): its config
    keys, the data and the checkpoint."""
    return ADAPTER.signature(cfg, manifest.signature(), provenance.get("checkpoint_sha256"))


def finetune_from_config(cfg, manifest: Manifest,
                         group: ProcessGroup = ProcessGroup()) -> Path | None:
    """Fine-tune SAM with LoRA as ``cfg.sam`` says and return the adapter folder.

    Under torchrun (``group``) the ranks train together (:func:`finetune`) and rank 0 writes the
    adapter; every rank returns once it is on disk.

    Returns
    -------
    Path or None
        ``cfg.run_dir/sam_adapter``; None when ``sam.finetune.enabled`` is false or no training
        mask exists. An adapter already there is reused when its signature matches.
    """
    from dorl.device import get_device
    from dorl.sam.lora import add_lora
    from dorl.sam.models import sam_from_config

    ft = cfg.sam.finetune
    if not ft.enabled:
        logger.info("SAM fine-tuning disabled (sam.finetune.enabled=false): zero-shot SAM")
        return None
    out_dir = Path(cfg.run_dir) / ADAPTER_DIR
    model, provenance = sam_from_config(cfg)
    signature = finetune_signature(cfg, manifest, provenance)
    sig_file = out_dir / SIGNATURE_FILE
    found = json.loads(sig_file.read_text())["signature"] if sig_file.is_file() else None
    if reusable(ADAPTER, out_dir, found, signature):
        return out_dir
    model = model.to(get_device(cfg.device))
    data = training_set(cfg, manifest, model)
    n_train, n_val = int((~data["val"]).sum()), int(data["val"].sum())
    if n_train == 0:
        logger.warning("no training masks for SAM fine-tuning (all domains excluded, no dataset "
                       "masks and no pseudo-mask passed the checks): zero-shot SAM is used")
        return None
    logger.info("SAM fine-tuning on %d images (%d for validation); mask sources: %s",
                n_train, n_val, data["sources"])
    lora = cfg.sam.lora
    add_lora(model, int(lora.rank), float(lora.alpha), float(lora.dropout),
             list(lora.target_modules), bool(cfg.sam.train_prompt_encoder))
    if ft.checkpoint_blocks:
        checkpoint = getattr(model.image_encoder, "checkpoint_blocks", None)
        if checkpoint is None:
            raise ConfigError(f"sam.finetune.checkpoint_blocks: the {cfg.sam.backbone} encoder "
                              f"cannot recompute its blocks; set it to false")
        checkpoint()
    images, masks = torch.from_numpy(data["images"]), torch.from_numpy(data["masks"])
    train = torch.from_numpy(~data["val"])
    loader = DataLoader(TensorDataset(images[train], masks[train]), batch_size=int(ft.batch_size),
                        shuffle=True, generator=torch.Generator().manual_seed(int(cfg.seed)))
    val_loader = None
    if n_val:
        val_loader = DataLoader(TensorDataset(images[~train], masks[~train]),
                                batch_size=int(cfg.sam.infer.batch_size))
    augment = OmegaConf.to_container(ft.augment, resolve=True) if ft.augment else None
    result = finetune(model, loader, val_loader, epochs=int(ft.epochs), lr=float(ft.lr),
                      weight_decay=float(ft.weight_decay),
                      warmup_epochs=float(ft.warmup_epochs), prompt=cfg.sam.prompt,
                      box_fraction=float(cfg.sam.box_fraction), out_dir=out_dir,
                      ce_weight=float(ft.ce_weight), dice_weight=float(ft.dice_weight),
                      augment=augment, val_zooms=tuple(float(z) for z in ft.val_zooms),
                      seed=int(cfg.seed), group=group)
    result.update({"n_train": n_train, "n_val": n_val, "sources": data["sources"],
                   "provenance": provenance})
    if group.is_main:
        write_text_atomic(out_dir / LOG_FILE, json.dumps(result, indent=2, default=str))
        write_text_atomic(sig_file, json.dumps({"signature": signature}))
    group.barrier()
    logger.info("adapter from epoch %s (val Dice %s) in %s", result["best_epoch"],
                result["best_val_dice"], out_dir)
    return out_dir
