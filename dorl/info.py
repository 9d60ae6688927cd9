"""`dorl info`: what a user needs to know about this installation and a run's outputs."""

from __future__ import annotations

import os
from pathlib import Path

from dorl.provenance import package_versions

#: Result files of a run, relative to run_dir, with what they are.
RUN_OUTPUTS = (
    ("features.h5ad", "embeddings + metadata + provenance (AnnData .h5ad)"),
    ("classify/results.md", "classifier comparison table"),
    ("classify/results.csv", "every score, tidy"),
    ("classify/summary.json", "headline figures, classifier choices, few-shot curve"),
    ("classify/few_shot.png", "few-shot learning curve"),
    ("segmentation.h5", "per-cell masks, crops and SAM features (resumable store)"),
    ("cell_features.h5", "per-cell features of each cell encoder, before standardisation"),
    ("umap/umap.png", "UMAP by domain and by class"),
    ("umap/umap.html", "UMAP explorer: thumbnails on hover, lasso selection (offline HTML)"),
    ("sam_eval/report.md", "segmentation Dice/IoU per domain"),
    ("dorl.log", "log of every command"),
)


def _checkpoint_status(backbone: str, checkpoint: str | None) -> str:
    """Where the SAM weights of ``backbone`` (``sam.checkpoint``, else the default file) are,
    or why they are not there."""
    from dorl.sam.checkpoints import default_checkpoint

    if checkpoint:
        path = Path(checkpoint)
        return f"checkpoint {path} ({'found' if path.is_file() else 'MISSING'})"
    try:
        path = default_checkpoint(backbone)
    except FileNotFoundError as exc:
        return f"MISSING: {exc}"
    return "random weights" if path is None else f"checkpoint {path} (found)"


def describe(cfg, outputs: bool = False) -> str:
    """Return a readable summary: versions, device, checkpoint settings, and run outputs."""
    from dorl.device import get_device

    lines = ["dorl installation"]
    lines += [f"  {name:<18} {version}" for name, version in package_versions().items()]
    lines.append(f"  device (config {cfg.device!r}) -> {get_device(cfg.device)}")
    lines.append(f"  SAM backbone {cfg.sam.backbone!r}: "
                 f"{_checkpoint_status(cfg.sam.backbone, cfg.sam.checkpoint)}")
    lines.append(f"  DORL_CHECKPOINT_DIR={os.environ.get('DORL_CHECKPOINT_DIR', '(unset)')}")
    if outputs:
        run_dir = Path(cfg.run_dir)
        lines.append(f"results of run {run_dir.resolve()}")
        for rel, what in RUN_OUTPUTS:
            path = run_dir / rel
            if path.exists():
                lines.append(f"  {str(path):<40} {what}")
    return "\n".join(lines)
