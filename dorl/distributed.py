"""Multi-process runs on torch.distributed, launched with ``torchrun``.

``torchrun --nproc_per_node N -m dorl embed -c ...`` starts N copies of ``dorl embed``; each
reads its rank from the environment that torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). A plain ``dorl embed`` is a group of one, and every helper here is then a no-op,
so the stages call them unconditionally. The backend is NCCL on CUDA and gloo on CPU.

What runs where (``dorl embed``):

* LoRA fine-tuning: every rank takes its slice of each batch, and DistributedDataParallel
  averages the gradients, so the steps are those of the single-process run on the whole batch;
  rank 0 saves the adapter.
* Segmentation and cell features: each rank processes its own block of manifest rows into its
  own part of the store; rank 0 joins the parts (``segmentation.h5``, ``cell_features.h5``).
* The autoencoder (``cae.enabled``): every rank trains on its share of each domain-balanced
  batch, and the gradients are averaged over the ranks after every step (each rank keeps its
  own BatchNorm statistics); rank 0 saves the checkpoints.
* ``features.h5ad``: rank 0; the other ranks wait.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its
    machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's shared outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op in a group of one)."""
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (``obj`` itself in a group of one), so that decisions
        taken from it (the best epoch, early stopping) are the same everywhere."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (``values`` itself in a group of one)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        total = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(total)
        return {k: float(v) / self.world_size for k, v in zip(keys, total)}

    def block(self, n: int, align: int = 1) -> tuple[int, int]:
        """This rank's contiguous block ``[start, stop)`` of ``n`` rows.

        Block edges fall on multiples of ``align`` (the batch size, say), so every batch holds
        the same rows as in a single-process run and gives the same numbers.
        """
        units = -(-n // align)
        start = (units * self.rank // self.world_size) * align
        stop = (units * (self.rank + 1) // self.world_size) * align
        return min(start, n), min(stop, n)


def current() -> ProcessGroup:
    """The process group torchrun's environment describes (a group of one without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size(),
                            int(os.environ.get("LOCAL_RANK", 0)))
    return ProcessGroup(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun set up, when there is one.

    On CUDA each rank takes the GPU of its ``LOCAL_RANK`` and NCCL; on CPU, gloo.

    Returns
    -------
    ProcessGroup
    """
    group = current()
    if not group.distributed or dist.is_initialized():
        return group
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d (%s)", group.rank, group.world_size, backend)
    return group


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
