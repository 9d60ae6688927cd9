"""The images and masks SAM's LoRA fine-tuning trains and validates on.

Training masks come, in order of preference, from the dataset itself (manifest ``mask_path``;
the synthetic generator writes its masks there) and from pseudo-masks bootstrapped on the
unlabelled domains (:mod:`dorl.sam.pseudo_masks`). Domains in ``sam.finetune.exclude_domains``
are never trained on. No class label is read.
"""

from __future__ import annotations

import numpy as np

from dorl.data.images import read_cell_mask, read_rgb
from dorl.data.manifest import Manifest


# Candidates drawn per wanted pseudo-mask: about 75 % of Acevedo-20 and 50 % of LISC colour
# masks pass the quality checks (222 of 288 and 80 of 150 crops in docs/benchmarks.md).
PSEUDO_CANDIDATES = 3


def _balanced_sample(domains: np.ndarray, rows: np.ndarray, n: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Pick up to ``n`` of ``rows``, as evenly over their domains as they allow, in seeded order."""
    pools = {d: list(rng.permutation(rows[domains[rows] == d])) for d in np.unique(domains[rows])}
    picked = []
    while len(picked) < n and any(pools.values()):
        for pool in pools.values():
            if pool and len(picked) < n:
                picked.append(pool.pop())
    return np.sort(np.array(picked, dtype=int))


def validation_rows(is_val: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which of the chosen images validate.

    Without manifest ``val`` rows, each image validates with probability ``fraction``. A sample
    of a few dozen images can also hold a single manifest ``val`` row, and a checkpoint chosen on
    one image is chosen by chance, so those are topped up at random to ``round(fraction * n)``.

    Parameters
    ----------
    is_val : bool ndarray of shape (n,)
        The images whose manifest split is ``val``.
    fraction : float
    rng : numpy Generator

    Returns
    -------
    bool ndarray of shape (n,)
    """
    val = np.asarray(is_val, dtype=bool).copy()
    n = len(val)
    if n < 2:
        return val
    if not val.any():
        return rng.random(n) < fraction
    missing = min(n - 1, int(round(fraction * n))) - int(val.sum())
    if missing > 0:
        val[rng.choice(np.flatnonzero(~val), missing, replace=False)] = True
    return val


def training_set(cfg, manifest: Manifest, model) -> dict:
    """Choose the fine-tuning images and their masks, at the model's input size.

    Rows from ``sam.finetune.exclude_domains`` are never used. ``mask_source``: ``dataset`` uses
    the manifest's masks; ``pseudo`` bootstraps pseudo-masks for rows without one; ``auto`` uses
    the dataset's masks and pseudo-masks for the domains that have none.

    Returns
    -------
    dict
        ``images`` uint8 (n, S, S, 3), ``masks`` bool (n, S, S), ``val`` bool (n,), ``rows``
        (manifest row indices) and ``sources`` (counts per mask source and domain).
    """
    from dorl.resize import resize_image, resize_mask
    from dorl.sam.pseudo_masks import bootstrap_pseudo_masks

    ft, s = cfg.sam.finetune, model.image_size
    table = manifest.table
    domains = table["domain"].to_numpy()
    allowed = ~np.isin(domains, list(ft.exclude_domains))
    has_mask = (table["mask_path"] != "").to_numpy()
    source = str(ft.mask_source)
    if source not in ("auto", "dataset", "pseudo"):
        raise ValueError("sam.finetune.mask_source must be auto, dataset or pseudo, "
                         f"got {source!r}")
    masked_domains = set(domains[allowed & has_mask])
    use_dataset = allowed & has_mask & (source != "pseudo")
    use_pseudo = allowed & ~has_mask & (source != "dataset")
    if source == "auto":
        use_pseudo &= ~np.isin(domains, list(masked_domains))
    rng = np.random.default_rng(int(cfg.seed))
    n_max = int(ft.max_images)
    n_pseudo = n_max // 2 if use_dataset.any() and use_pseudo.any() else n_max
    candidates = _balanced_sample(domains, np.flatnonzero(use_pseudo),
                                  PSEUDO_CANDIDATES * n_pseudo, rng)
    rows, images, masks, sources = [], [], [], {}
    if len(candidates):
        picked = [read_rgb(manifest.image_path(i)) for i in candidates]
        pseudo, _ = bootstrap_pseudo_masks(picked, s, model, cfg.sam.prompt,
                                           float(cfg.sam.box_fraction),
                                           int(cfg.sam.infer.batch_size))
        passed = {i: (image, mask) for i, image, mask in zip(candidates, picked, pseudo)
                  if mask is not None}
        # as evenly over the domains as the passing masks allow (pass rates differ by lab)
        for i in _balanced_sample(domains, np.array(list(passed), dtype=int), n_pseudo, rng):
            image, mask = passed[i]
            rows.append(i)
            images.append(resize_image(image, s))
            masks.append(mask)
            key = f"pseudo:{domains[i]}"
            sources[key] = sources.get(key, 0) + 1
    dataset_rows = _balanced_sample(domains, np.flatnonzero(use_dataset), n_max - len(rows), rng)
    for i in dataset_rows:
        rows.append(i)
        images.append(resize_image(read_rgb(manifest.image_path(i)), s))
        masks.append(resize_mask(read_cell_mask(manifest.mask_path(i)), s))
        key = f"dataset:{domains[i]}"
        sources[key] = sources.get(key, 0) + 1
    rows = np.array(rows, dtype=int)
    val = validation_rows(table["split"].to_numpy()[rows] == "val", float(ft.val_fraction), rng)
    return {"images": np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8),
            "masks": np.stack(masks) if masks else np.zeros((0, s, s), bool),
            "val": val, "rows": rows, "sources": sources}
