"""Choosing the torch device and CPU threading for a run."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def get_device(name: str | None = "auto") -> torch.device:
    """Resolve ``auto`` (CUDA, then MPS, then CPU) or an explicit device name.

    Raises
    ------
    RuntimeError
        When an explicitly requested accelerator is not available.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but PyTorch has no CUDA device here; "
                           f"use device=cpu or device=auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {name!r} requested but the MPS backend is not available")
    return device


def configure_threads(num_threads: int | None) -> None:
    """Set torch's intra-op thread count when the config asks for one."""
    if num_threads:
        torch.set_num_threads(int(num_threads))
        logger.debug("torch threads: %d", num_threads)
