"""What produced an artifact: package versions, file hashes, data signatures, run folders."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Iterable

from dorl import __version__

logger = logging.getLogger(__name__)

_PACKAGES = (
    "torch", "numpy", "scipy", "scikit-learn", "xgboost", "xgboost-cpu", "lightgbm", "umap-learn",
    "h5py", "pandas", "peft", "segment-anything", "pytorch-msssim", "omegaconf", "pillow",
)


def package_versions() -> dict[str, str]:
    """Return the versions of dorl, python and the installed packages it relies on."""
    versions = {"dorl": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def signature_of(items: Iterable[object]) -> str:
    """Return a short stable hash of an iterable of JSON-serialisable items (order matters)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def utc_now() -> str:
    """Return the current UTC time in ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def setup_run_logging(run_dir: str | Path, verbose: bool = False, rank: int = 0) -> Path:
    """Send dorl's log records to ``run_dir/dorl.log`` and to the console; return the log path.
    Rank ``rank`` > 0 of a torchrun group logs to ``dorl.rank<rank>.log`` instead."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / ("dorl.log" if rank == 0 else f"dorl.rank{rank}.log")
    _log_to([logging.FileHandler(log_path, encoding="utf-8"), logging.StreamHandler()], verbose)
    return log_path


def setup_console_logging(verbose: bool = False) -> None:
    """Send dorl's log records to the console only (the commands that write no run folder)."""
    _log_to([logging.StreamHandler()], verbose)


def _log_to(handlers: list[logging.Handler], verbose: bool) -> None:
    root = logging.getLogger("dorl")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    close_run_logging()
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._dorl = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


def close_run_logging() -> None:
    """Remove and close the handlers of :func:`setup_run_logging`, so that no log file stays
    open after a command (a run folder can then be moved, or its file system unmounted)."""
    root = logging.getLogger("dorl")
    for handler in list(root.handlers):
        if getattr(handler, "_dorl", False):
            root.removeHandler(handler)
            handler.close()
