"""Segmentation quality: Dice and IoU per domain against ground-truth masks, zero-shot vs
fine-tuned SAM, with overlay PNGs (``dorl sam eval``).

Rows of a domain the adapter was trained on are scored on their ``val`` split only, so a score
never comes from a training image; domains that were not trained on are scored in full.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from dorl.atomic import atomic_path, write_text_atomic
from dorl.data.images import read_cell_mask, read_rgb
from dorl.data.manifest import Manifest
from dorl.device import get_device, resolve_bf16
from dorl.sam.metrics import dice, iou
from dorl.tables import markdown_table

logger = logging.getLogger(__name__)

EVAL_DIR = "sam_eval"
GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 0, 200)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Draw the outlines of a ground-truth (green) and a predicted (magenta) mask on an image.

    Parameters
    ----------
    image : uint8 ndarray of shape (S, S, 3)
    truth, pred : bool ndarray of shape (S, S)

    Returns
    -------
    uint8 ndarray of shape (S, S, 3)
    """
    out = image.copy()
    for mask, colour in ((truth, GT_COLOUR), (pred, PRED_COLOUR)):
        edge = mask & ~ndi.binary_erosion(mask, iterations=max(1, image.shape[0] // 128))
        out[edge] = colour
    return out


def _scored_rows(manifest: Manifest, excluded_domains: list[str], trained: bool) -> np.ndarray:
    """Rows with a ground-truth mask that no adapter was trained on (``excluded_domains``:
    ``sam.finetune.exclude_domains``)."""
    table = manifest.table
    has_mask = (table["mask_path"] != "").to_numpy()
    excluded = np.isin(table["domain"].to_numpy(), excluded_domains)
    held_out = excluded | (table["split"].to_numpy() == "val") | (not trained)
    return np.flatnonzero(has_mask & held_out)


def _summarise(scores: dict[str, list[float]]) -> dict:
    return {k: {"mean": float(np.mean(v)), "median": float(np.median(v)), "n": len(v)}
            for k, v in scores.items()}


def evaluate_from_config(cfg, manifest: Manifest) -> dict:
    """Score zero-shot and fine-tuned SAM masks per domain and write the report.

    Writes ``run_dir/sam_eval/report.json``, ``report.md`` and ``overlays/*.png`` (for a few
    cells per domain: the image with ground truth in green and the prediction in magenta, zero-
    shot left, fine-tuned right). Uses the adapter of :func:`dorl.sam.finetune.finetune_from_config`
    (trained first if missing).

    Returns
    -------
    dict
        ``{"domains": {domain: {model: {"dice": {mean, median, n}, "iou": {...},
        "fallback": n}}}, "prompt": ..., "image_size": ..., "adapter": ...}``
    """
    from dorl.resize import resize_image, resize_mask
    from dorl.sam.finetune import finetune_from_config
    from dorl.sam.inference import load_model, predict_masks
    from dorl.sam.masks import clean_mask, is_usable

    out_dir = Path(cfg.run_dir) / EVAL_DIR
    adapter = finetune_from_config(cfg, manifest)
    rows = _scored_rows(manifest, list(cfg.sam.finetune.exclude_domains), adapter is not None)
    if cfg.sam.eval.max_images and len(rows) > int(cfg.sam.eval.max_images):
        rng = np.random.default_rng(int(cfg.seed))
        rows = np.sort(rng.choice(rows, int(cfg.sam.eval.max_images), replace=False))
    if not len(rows):
        raise ValueError("sam eval: no manifest row has a ground-truth mask (mask_path) that "
                         "the adapter was not trained on; nothing to score")
    domains = manifest.table["domain"].to_numpy()[rows]
    images = [read_rgb(manifest.image_path(i)) for i in rows]
    models = {"zero_shot": None} if adapter is None else {"zero_shot": None, "finetuned": adapter}
    infer = cfg.sam.infer
    predictions, report = {}, {"prompt": cfg.sam.prompt, "image_size": int(cfg.sam.image_size),
                               "adapter": None if adapter is None else str(adapter),
                               "domains": {}}
    for name, adapter_dir in models.items():
        model, _ = load_model(cfg, adapter_dir)
        raw, _, _ = predict_masks(model, images, cfg.sam.prompt, float(cfg.sam.box_fraction),
                                  int(infer.batch_size),
                                  resolve_bf16(infer.bf16, get_device(cfg.device)), "none",
                                  progress=True)
        predictions[name] = [clean_mask(m) for m in raw]
    s = int(cfg.sam.image_size)
    truths = [resize_mask(read_cell_mask(manifest.mask_path(i)), s) for i in rows]
    for domain in dict.fromkeys(domains):
        idx = np.flatnonzero(domains == domain)
        entry = {}
        for name, preds in predictions.items():
            entry[name] = {
                **_summarise({"dice": [dice(preds[k], truths[k]) for k in idx],
                              "iou": [iou(preds[k], truths[k]) for k in idx]}),
                "fallback": int(sum(not is_usable(preds[k], float(infer.min_area_frac),
                                                  float(infer.max_border_frac)) for k in idx))}
        report["domains"][str(domain)] = entry
        for k in idx[:int(cfg.sam.eval.n_overlays)]:
            panels = [overlay(resize_image(images[k], s), truths[k], p[k])
                      for p in predictions.values()]
            name = Path(manifest.table["path"].iloc[rows[k]]).stem
            target = out_dir / "overlays" / f"{domain}_{name}.png"
            with atomic_path(target) as tmp:
                Image.fromarray(np.concatenate(panels, axis=1)).save(tmp, format="PNG")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out_dir / "report.md", report_markdown(report))
    logger.info("SAM segmentation report: %s\n%s", out_dir / "report.md", report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """The report as a Markdown table: one row per domain and model."""
    rows = [[domain, name, s["dice"]["n"], f"{s['dice']['mean']:.3f}",
             f"{s['dice']['median']:.3f}", f"{s['iou']['mean']:.3f}", s["fallback"]]
            for domain, entry in report["domains"].items() for name, s in entry.items()]
    table = markdown_table(["domain", "model", "n", "Dice mean", "Dice median", "IoU mean",
                            "fallback"], rows)
    return (f"# SAM segmentation quality (prompt `{report['prompt']}`, {report['image_size']} px)"
            "\n\nGround truth in green, prediction in magenta in `overlays/` (zero-shot left, "
            f"fine-tuned right).\n\n{table}\n")
