"""Training the cross-domain autoencoder: losses, epochs, checkpoints, resume, early stopping.

Each step draws a domain-balanced batch (:mod:`dorl.cae.batches`) and minimises

    ssim * (1 - SSIM) + l1 * L1 + mse * MSE + feature * MSE(features)
        + ramp(epoch) * (mmd * MMD^2 + coral * CORAL)

where the alignment terms are averaged over every pair of domains (:mod:`dorl.cae.alignment`). The
decoder may be domain-conditional (``cae.domain_code_dim``), so the domain's stain need not pass
through the aligned latent. The learning rate warms up linearly, then decays on a cosine, per step.
After every epoch the full state (weights, optimiser, schedule, history, best weights) is saved
atomically to ``last.pt``, so an interrupted run resumes from the last finished epoch and ends with
the same weights as an uninterrupted one. The validation reconstruction loss (cells with manifest
split ``val``) picks the best epoch once the alignment ramp is complete, and stops training after
``patience`` epochs without improvement. Class labels never reach this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from tqdm.auto import tqdm

from dorl.artifacts import CAE_CHECKPOINT, reusable
from dorl.atomic import atomic_path
from dorl.cae.alignment import align_weight, coral, mmd2, pairwise_alignment
from dorl.cae.batches import DomainBalancedBatches
from dorl.cae.models import CAEOutput, FeatureScaler, build_autoencoder
from dorl.cae.settings import CAESettings, LossWeights
from dorl.distributed import ProcessGroup
from dorl.lr_schedule import warmup_cosine, warmup_steps
from dorl.resize import resize_batch
from dorl.row_sources import RowSource
from dorl.sam.augment import augment_batch

logger = logging.getLogger(__name__)

LOSS_TERMS = ("ssim", "l1", "mse", "feature", "align")
#: The reconstruction terms: their validation sum picks the best epoch and stops training (the
#: alignment term, a noisy two-sample estimate on few validation cells, would dominate it).
RECON_TERMS = ("ssim", "l1", "mse", "feature")


class CheckpointError(RuntimeError):
    """A CAE checkpoint is unreadable or was made by another config or dataset."""


@dataclass
class CAEData:
    """The cells the autoencoder sees, without labels.

    Attributes
    ----------
    crops : uint8 ndarray or row source of shape (n, s, s, 3)
        Masked cell crops (the reconstruction target, and the input when ``cae.input`` uses it).
        A row source (e.g. the segmentation store's) is read batch by batch.
    features : float32 ndarray of shape (n, C) or (n, C, h, w), or None
        SAM encoder features of the same cells.
    domain_ids : int ndarray of shape (n,)
        Index into ``domains`` for each cell.
    domains : list of str
    image_size : int, optional
        Crops larger than this are downsized to it when read (the SSIM target is never
        upsampled); None keeps them as stored.
    """

    crops: RowSource
    features: np.ndarray | None
    domain_ids: np.ndarray
    domains: list[str]
    image_size: int | None = None

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def side(self) -> int:
        """The side of the crops the autoencoder sees."""
        stored = int(self.crops.shape[1])
        return stored if self.image_size is None else min(stored, int(self.image_size))

    def crop_rows(self, idx: np.ndarray) -> np.ndarray:
        """The crops of rows ``idx``, uint8 (b, side, side, 3)."""
        crops = np.asarray(self.crops[idx])
        return crops if crops.shape[1] == self.side else resize_batch(crops, self.side)

    def batch(self, idx: np.ndarray, device: torch.device,
              crops: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Tensors for rows ``idx``: ``crop`` (b, 3, s, s) float in [0, 1] (channels_last),
        ``domain`` (b,) int64 (for a domain-conditional decoder) and ``features`` (b, ...)
        float32 when present. ``crops``: those rows' :meth:`crop_rows`, when already read."""
        crops = self.crop_rows(idx) if crops is None else crops
        crop = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()
        crop = crop / 255.0
        domain = torch.from_numpy(np.asarray(self.domain_ids[idx], dtype=np.int64))
        out = {"crop": crop.contiguous(memory_format=torch.channels_last),
               "domain": domain.to(device)}
        if self.features is not None:
            out["features"] = torch.from_numpy(np.ascontiguousarray(self.features[idx])).to(device)
        return out


@dataclass
class TrainResult:
    """A trained autoencoder and how it got there.

    Attributes
    ----------
    model : nn.Module
        In eval mode, holding the best epoch's weights.
    history : list of dict
        One record per epoch: ``epoch``, ``train_*`` and ``val_*`` loss terms (``val_recon``:
        the reconstruction terms' sum, the early-stopping criterion), ``align_weight``,
        ``seconds``.
    best_epoch : int
    stopped_early : bool
    checkpoint : Path
        ``best.pt``, the best weights.
    """

    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    checkpoint: Path


def feature_scaler(features: np.ndarray | None, train_idx: np.ndarray) -> FeatureScaler | None:
    """Per-dimension mean and std of the training cells' features (None without features)."""
    if features is None:
        return None
    train = torch.from_numpy(np.asarray(features[train_idx], dtype=np.float32))
    return FeatureScaler(train.mean(0), train.std(0))


def alignment(z: torch.Tensor, domain_ids: torch.Tensor, weights: LossWeights,
              bandwidths: tuple[float, ...], scale: float = 1.0) -> torch.Tensor:
    """The weighted alignment terms of latents ``z`` (b, d) over every pair of domains:
    ``scale * (mmd * MMD^2 + coral * CORAL)``, the terms with weight 0 left out. Training passes
    the warm-up ramp as ``scale``; validation takes the full weight."""
    total = z.new_zeros(())
    if weights.mmd > 0:
        total = total + scale * weights.mmd * pairwise_alignment(
            z, domain_ids, partial(mmd2, bandwidths=bandwidths))
    if weights.coral > 0:
        total = total + scale * weights.coral * pairwise_alignment(z, domain_ids, coral)
    return total


def compute_losses(model: torch.nn.Module, out: CAEOutput, batch: dict[str, torch.Tensor],
                   domain_ids: torch.Tensor, weights: LossWeights, ramp: float,
                   bandwidths: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch and their sum under ``"total"``.

    Parameters
    ----------
    out : CAEOutput
        The model's output for ``batch``.
    domain_ids : Tensor of shape (b,)
    weights : LossWeights
    ramp : float
        Alignment warm-up factor in [0, 1]; 0 leaves the alignment out.
    bandwidths : tuple of float
        MMD kernel bandwidths.
    """
    target = batch["crop"]
    terms = {
        "ssim": weights.ssim * (1.0 - ssim(out.image, target, data_range=1.0, size_average=True)),
        "l1": weights.l1 * F.l1_loss(out.image, target),
        "mse": weights.mse * F.mse_loss(out.image, target),
        "feature": out.z.new_zeros(()),
        "align": out.z.new_zeros(()),
    }
    if out.features is not None:
        terms["feature"] = weights.feature * F.mse_loss(out.features,
                                                        model.scaler(batch["features"]))
    if ramp > 0:
        terms["align"] = terms["align"] + alignment(out.z, domain_ids, weights, bandwidths,
                                                    scale=ramp)
    terms["total"] = sum(terms[k] for k in LOSS_TERMS)
    return terms


@torch.inference_mode()
def encode_cells(model: torch.nn.Module, data: CAEData, device: torch.device,
                 batch_size: int = 256, desc: str = "embedding") -> np.ndarray:
    """Latent codes of every cell, float32 (n, latent_dim), in eval mode (no token masking)."""
    model.eval()
    chunks = []
    for start in tqdm(range(0, len(data), batch_size), desc=desc, leave=False):
        idx = np.arange(start, min(start + batch_size, len(data)))
        chunks.append(model.encode(data.batch(idx, device)).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


@torch.inference_mode()
def _validate(model, data: CAEData, val_idx: np.ndarray, device,
              settings: CAESettings) -> dict[str, float]:
    """Loss terms over the validation cells, alignment at full weight over all of them."""
    model.eval()
    sums = {k: 0.0 for k in LOSS_TERMS}
    zs, doms = [], []
    for start in range(0, len(val_idx), 256):
        idx = val_idx[start:start + 256]
        batch = data.batch(idx, device)
        out = model(batch)
        terms = compute_losses(model, out, batch, out.z.new_zeros(len(idx), dtype=torch.long),
                               settings.loss, 0.0, settings.mmd_bandwidths)
        for k in LOSS_TERMS:
            sums[k] += float(terms[k]) * len(idx)
        zs.append(out.z)
        doms.append(torch.from_numpy(data.domain_ids[idx]))
    result = {k: v / len(val_idx) for k, v in sums.items()}
    result["align"] = float(alignment(torch.cat(zs), torch.cat(doms).to(device), settings.loss,
                                      settings.mmd_bandwidths))
    result["recon"] = sum(result[k] for k in RECON_TERMS)
    result["total"] = result["recon"] + result["align"]
    return result


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, signature: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the CAE checkpoint ({exc}); delete it to "
                              f"train from scratch") from exc
    reusable(CAE_CHECKPOINT, path, state.get("signature", ""), signature, refuse=True,
             error=CheckpointError)
    return state


def plot_loss_curves(history: list[dict[str, float]], path: str | Path,
                     best_epoch: int | None = None) -> Path:
    """Write train/validation loss curves (total and each term) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "--")):
        axes[0].plot(epochs, [h[f"{split}_total"] for h in history], style, label=split)
        for k in LOSS_TERMS:
            values = [h[f"{split}_{k}"] for h in history]
            if any(values):
                axes[1].plot(epochs, values, style, label=f"{split} {k}")
    if best_epoch is not None:
        axes[0].axvline(best_epoch + 1, color="grey", lw=0.8, label="best")
    axes[0].set_title("total loss")
    axes[1].set_title("weighted terms (alignment ramped in training)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def _fresh_state() -> dict:
    return {"epoch": -1, "history": [], "best_loss": float("inf"), "best_epoch": -1,
            "best_state": None, "bad_epochs": 0, "done": False}


def _rank_rows(idx: np.ndarray, group: ProcessGroup) -> tuple[np.ndarray, float]:
    """This rank's share of a domain-balanced batch and the weight of its loss.

    Every ``world_size``-th row from the rank's offset: the batch is domain after domain, so
    each share keeps every domain (when a domain has at least ``world_size`` cells in it) and
    the alignment terms stay defined. A rank left without rows trains on the batch's last one
    with weight 0, so that it still joins the gradient exchange.
    """
    if not group.distributed:
        return idx, 1.0
    share = idx[group.rank::group.world_size]
    return (share, 1.0) if len(share) else (idx[-1:], 0.0)


def _train_epoch(model, trained, data: CAEData, train_idx: np.ndarray,
                 batches: DomainBalancedBatches, optimizer, scheduler, settings: CAESettings,
                 epoch: int, seed: int, device, group: ProcessGroup) -> dict[str, float]:
    """One epoch of optimiser steps; returns the mean of each loss term and of the total (over
    the ranks too). ``trained`` is ``model``, or its DistributedDataParallel wrapper."""
    model.train()
    torch.manual_seed(seed * 100_003 + epoch)
    views = settings.loss.consistency > 0 and settings.uses_crop
    # A generator of its own, so the views leave the global random stream as it is.
    view_rng = torch.Generator().manual_seed(seed * 100_003 + epoch) if views else None
    sums = {k: 0.0 for k in LOSS_TERMS + ("total",) + (("consistency",) if views else ())}
    for step, local in enumerate(batches.epoch(epoch)):
        idx, weight = _rank_rows(train_idx[local], group)
        crops = data.crop_rows(idx)  # read once: the second view redraws the same crops
        batch = data.batch(idx, device, crops)
        dom = torch.from_numpy(data.domain_ids[idx]).to(device)
        ramp = align_weight(epoch + step / len(batches), settings.loss.align_warmup_epochs)
        out = trained(batch)
        terms = compute_losses(model, out, batch, dom, settings.loss, ramp,
                               settings.mmd_bandwidths)
        if views:
            terms["consistency"] = settings.loss.consistency * F.mse_loss(
                out.z, model.encode(_second_view(crops, batch, settings, view_rng)))
            terms["total"] = terms["total"] + terms["consistency"]
        optimizer.zero_grad(set_to_none=True)
        (weight * terms["total"]).backward()
        optimizer.step()
        scheduler.step()
        for k in sums:
            sums[k] += float(terms[k].detach()) / len(batches)
    return group.mean(sums)


def _second_view(crops: np.ndarray, batch: dict[str, torch.Tensor],
                 settings: CAESettings, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``batch`` with its crops re-drawn under random stain, colour, blur and scale changes
    (``cae.view_augment``): the view whose latent the consistency term pulls to the first."""
    crops = torch.from_numpy(crops)
    view, _ = augment_batch(crops, torch.ones(crops.shape[:3], dtype=torch.bool),
                            settings.view_augment, generator)
    crop = view.to(batch["crop"].device).permute(0, 3, 1, 2).float() / 255.0
    return {**batch, "crop": crop.contiguous(memory_format=torch.channels_last)}


def _track_best(state: dict, val: dict[str, float], epoch: int, model,
                settings: CAESettings) -> None:
    """Keep the best weights by validation reconstruction once the alignment ramp is complete,
    and mark the state done after ``patience`` epochs without improvement."""
    ramp_complete = epoch + 1 >= settings.loss.align_warmup_epochs
    if not ramp_complete or val["recon"] < state["best_loss"]:
        state["best_loss"] = val["recon"] if ramp_complete else float("inf")
        state["best_epoch"] = epoch
        state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["bad_epochs"] = 0
        return
    state["bad_epochs"] += 1
    if state["bad_epochs"] >= settings.patience:
        state["done"] = True
        logger.info("CAE early stopping after epoch %d: no validation improvement for %d "
                    "epochs", epoch + 1, state["bad_epochs"])


def train_cae(data: CAEData, train_idx: np.ndarray, val_idx: np.ndarray, settings: CAESettings,
              seed: int, out_dir: str | Path, device: torch.device,
              signature: str, group: ProcessGroup = ProcessGroup()) -> TrainResult:
    """Train (or resume, or reload) the autoencoder on ``train_idx``, validating on ``val_idx``.

    Parameters
    ----------
    data : CAEData
    train_idx, val_idx : int ndarray
        Rows of ``data`` to train on and to validate on (disjoint, both non-empty).
    settings : CAESettings
    seed : int
    out_dir : str or Path
        Holds ``last.pt`` (resumable state), ``best.pt`` and ``loss_curves.png``.
    device : torch.device
    signature : str
        What the checkpoints must have been made with to be resumed (config + data hash).
    group : ProcessGroup
        Under torchrun every rank draws the same batches, trains on its share of each
        (:func:`_rank_rows`) and DistributedDataParallel averages the gradients. Rank 0's
        validation figures choose the best epoch and stop training on every rank; rank 0 saves
        the checkpoints.

    Raises
    ------
    CheckpointError
        When ``out_dir`` holds a checkpoint of another config or dataset.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"the autoencoder needs training and validation cells, got "
                         f"{len(train_idx)} and {len(val_idx)}")
    torch.manual_seed(seed)
    model = build_autoencoder(settings, data.side,
                              feature_scaler(data.features, train_idx), len(data.domains))
    model = model.to(device, memory_format=torch.channels_last)
    trained = model
    if group.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The parts a config leaves idle (e.g. the feature head without feature input) get no
        # gradient.
        where = next(model.parameters()).device  # cuda:<LOCAL_RANK> after init_from_env
        trained = DistributedDataParallel(
            model, device_ids=[where.index] if where.type == "cuda" else None,
            find_unused_parameters=True)
    batches = DomainBalancedBatches(data.domain_ids[train_idx], settings.batch_per_domain, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, total_steps=settings.epochs * len(batches),
                           warmup_steps=warmup_steps(settings.lr_warmup_epochs, len(batches))))
    state = _fresh_state()
    if last_path.is_file():
        saved = _load_checkpoint(last_path, signature)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["train_state"]
        logger.info("resuming CAE training from %s (epoch %d of %d done)", last_path,
                    state["epoch"] + 1, settings.epochs)
    if len(np.unique(data.domain_ids[train_idx])) < 2 and settings.loss.aligns:
        logger.warning("only one domain takes part in CAE training: no alignment is possible")
    bar = tqdm(range(state["epoch"] + 1, settings.epochs), desc="CAE epochs", leave=False,
               disable=not group.is_main)
    for epoch in bar:
        if state["done"]:
            break
        t0 = time.perf_counter()
        sums = _train_epoch(model, trained, data, train_idx, batches, optimizer, scheduler,
                            settings, epoch, seed, device, group)
        val = group.broadcast(_validate(model, data, val_idx, device, settings))
        record = {"epoch": epoch,
                  "align_weight": align_weight(epoch + 1, settings.loss.align_warmup_epochs),
                  "seconds": time.perf_counter() - t0,
                  **{f"train_{k}": v for k, v in sums.items()},
                  **{f"val_{k}": v for k, v in val.items()}}
        state["history"].append(record)
        state["epoch"] = epoch
        _track_best(state, val, epoch, model, settings)
        bar.set_postfix(train=f"{sums['total']:.4f}", val=f"{val['total']:.4f}")
        logger.info("CAE epoch %d/%d: train %.4f, val %.4f (reconstruction %.4f, align %.4f), "
                    "%.1f s", epoch + 1, settings.epochs, sums["total"], val["total"],
                    val["recon"], val["align"], record["seconds"])
        if group.is_main:
            _save(last_path, {"signature": signature, "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "train_state": state})
    if state["best_state"] is None:
        raise CheckpointError(f"{last_path}: no finished epoch to take weights from "
                              f"(cae.epochs={settings.epochs})")
    model.load_state_dict(state["best_state"])
    model.eval()
    if group.is_main:
        _save(best_path, {"signature": signature, "model": state["best_state"],
                          "best_epoch": state["best_epoch"]})
        plot_loss_curves(state["history"], out_dir / "loss_curves.png", state["best_epoch"])
    return TrainResult(model, state["history"], state["best_epoch"], bool(state["done"]),
                       best_path)
