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


def release_memory() -> None:
    """Hand the memory a finished stage freed back to the system.

    glibc keeps freed heap pages for reuse, so a process's resident memory stays at its largest
    stage's peak and the next stage adds its own on top; ``malloc_trim`` returns them (a no-op
    where the C library is not glibc). The CUDA cache is emptied too.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86; Linux only, where
    the flags can be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_bf16(setting, device: torch.device) -> bool:
    """Whether bfloat16 autocast is used on ``device`` for a ``bf16`` config value.

    ``auto`` turns it on where bfloat16 is native: a CUDA device that supports it, or a CPU with
    AVX512-BF16/AMX. Elsewhere it is emulated, and an encoder runs several times slower than in
    float32 (6x for LiteMedSAM on an AVX2 CPU, docs/benchmarks.md), so ``true`` there logs a
    warning.
    """
    if isinstance(setting, str):
        if setting.lower() != "auto":
            raise ValueError(f"bf16 must be true, false or auto, got {setting!r}")
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return device.type == "cpu" and _cpu_has_native_bf16()
    if setting and device.type == "cpu" and not _cpu_has_native_bf16():
        logger.warning("bf16 autocast on a CPU without native bfloat16: expect it to be several "
                       "times slower than float32 (set bf16: auto)")
    return bool(setting)
