"""The synthetic multi-domain white-cell dataset: images, Zheng-2018-style masks, a manifest.

Each domain is a lab preset (:mod:`dorl.data.synth.domains`); each image one white cell drawn by
:mod:`dorl.data.synth.cells`. Layout under the output folder::

    <domain>/<class>/<domain>_<index>.png|jpg     the cell image (JPEG for JPEG labs)
    <domain>/masks/<domain>_<index>.png           0 background, 128 cytoplasm, 255 nucleus

Every image has its own random generator, seeded by (seed, domain name, index), so the same
settings reproduce identical bytes, and adding a domain or images leaves the others unchanged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from dorl.atomic import atomic_path
from dorl.data.manifest import Manifest, finalize, load_manifest, save_manifest
from dorl.data.synth.cells import draw_cell
from dorl.data.synth.domains import DomainStyle, domain_style
from dorl.data.taxonomy import MATURE5
from dorl.errors import InputError

logger = logging.getLogger(__name__)

#: Fine label written for each synthetic class (see :mod:`dorl.data.taxonomy`).
SYNTH_FINE_LABELS = {"neutrophil": "neutrophil_segmented", "lymphocyte": "lymphocyte_typical",
               "monocyte": "monocyte", "eosinophil": "eosinophil", "basophil": "basophil"}
#: Smallest image side that still shows nuclear lobes and granules.
MIN_IMAGE_SIZE = 32


class SynthError(InputError, ValueError):
    """Settings for the synthetic dataset are invalid."""


def class_counts(n: int, class_weights: dict[str, float]) -> dict[str, int]:
    """Split ``n`` cells among classes in proportion to ``class_weights`` (largest remainder).

    Parameters
    ----------
    n : int
        Cells per domain.
    class_weights : dict
        Class name (one of the five mature classes) -> non-negative weight; normalised here.

    Returns
    -------
    dict
        Class -> count, summing to ``n``, in :data:`dorl.data.taxonomy.MATURE5` order.

    Raises
    ------
    SynthError
        On unknown classes, negative weights or weights that sum to zero.
    """
    unknown = sorted(set(class_weights) - set(MATURE5))
    if unknown:
        raise SynthError(f"data.synth.class_weights: unknown class(es) {unknown}; "
                         f"choose from {list(MATURE5)}")
    names = [c for c in MATURE5 if c in class_weights]
    weights = np.array([float(class_weights[c]) for c in names])
    if (weights < 0).any() or weights.sum() <= 0:
        raise SynthError(f"data.synth.class_weights must be non-negative and not all zero, "
                         f"got {dict(class_weights)}")
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:n - counts.sum()]] += 1
    return dict(zip(names, counts.tolist()))


def _encode(image: np.ndarray, jpeg_quality: int | None) -> bytes:
    """Encode an RGB or grey uint8 array as JPEG (given a quality) or PNG bytes."""
    buffer = io.BytesIO()
    if jpeg_quality is None:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def domain_key(name: str) -> int:
    """A stable integer for a domain name, so seeds do not depend on the order of domains."""
    return zlib.crc32(name.encode("utf-8"))


def _check(domains: list[str], n_per_domain: int, image_size: int) -> list[DomainStyle]:
    if not domains:
        raise SynthError("data.synth.domains is empty; name at least one preset")
    repeated = sorted({d for d in domains if domains.count(d) > 1})
    if repeated:
        raise SynthError(f"data.synth.domains names {repeated} more than once")
    if n_per_domain < 1:
        raise SynthError(f"data.synth.n_per_domain must be >= 1, got {n_per_domain}")
    if image_size < MIN_IMAGE_SIZE:
        raise SynthError(f"data.synth.image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    return [domain_style(d) for d in domains]


def generate(out_dir: str | Path, domains: list[str], n_per_domain: int, image_size: int,
             class_weights: dict[str, float], seed: int) -> pd.DataFrame:
    """Draw and write the images and masks of every domain; return their manifest rows.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created if needed).
    domains : list of str
        Lab preset names (see :data:`dorl.data.synth.domains.PRESETS`).
    n_per_domain : int
        Cells per domain.
    image_size : int
        Image side in pixels.
    class_weights : dict
        Class -> weight; each domain gets exactly :func:`class_counts` cells per class.
    seed : int
        Seed of every image's random generator.

    Returns
    -------
    pandas.DataFrame
        Columns path, domain, label_raw, label_fine, sha256, mask_path, with paths relative
        to ``out_dir``; one row per image, domains in the given order.
    """
    out_dir = Path(out_dir)
    styles = _check(list(domains), int(n_per_domain), int(image_size))
    counts = class_counts(int(n_per_domain), dict(class_weights))
    missing = [c for c in MATURE5 if counts.get(c, 0) == 0]
    if missing:
        logger.warning("synthetic data: no %s cells (n_per_domain=%d is too small for their "
                       "class weight)", ", ".join(missing), n_per_domain)
    rows = []
    with tqdm(total=len(styles) * n_per_domain, desc="synthetic cells", unit="img") as bar:
        for style in styles:
            key = domain_key(style.name)
            labels = np.repeat(list(counts), list(counts.values()))
            labels = np.random.default_rng([seed, key]).permutation(labels)
            for index, cls in enumerate(labels):
                rng = np.random.default_rng([seed, key, index])
                image, mask = draw_cell(str(cls), style, image_size, rng)
                stem = f"{style.name}_{index:05d}"
                path = f"{style.name}/{cls}/{stem}{style.suffix}"
                mask_path = f"{style.name}/masks/{stem}.png"
                data = _encode(image, style.jpeg_quality)
                _write(out_dir / path, data)
                _write(out_dir / mask_path, _encode(mask, None))
                rows.append({"path": path, "domain": style.name, "label_raw": str(cls),
                             "label_fine": SYNTH_FINE_LABELS[str(cls)],
                             "sha256": hashlib.sha256(data).hexdigest(),
                             "mask_path": mask_path})
                bar.update()
    logger.info("synthetic data: %d images in %d domain(s) (%s) written to %s; per domain %s",
                len(rows), len(styles), ", ".join(s.name for s in styles), out_dir, counts)
    return pd.DataFrame(rows)


def generate_from_config(cfg) -> Manifest:
    """Generate the dataset of ``cfg.data.synth`` into ``cfg.data.root``; write the manifest.

    Images and masks go under ``cfg.data.root``; the manifest, written last, goes to
    ``cfg.data.manifest`` with paths relative to its folder. Seeded by ``cfg.seed``.

    Returns
    -------
    Manifest
        The manifest as :func:`dorl.data.manifest.load_manifest` reads it back.
    """
    synth = cfg.data.synth
    root = Path(cfg.data.root)
    manifest_path = Path(cfg.data.manifest)
    rows = generate(root, list(synth.domains), int(synth.n_per_domain), int(synth.image_size),
                    OmegaConf.to_container(synth.class_weights, resolve=True), int(cfg.seed))
    if root.resolve() != manifest_path.parent.resolve():
        for col in ("path", "mask_path"):
            rows[col] = [os.path.relpath(root / p, manifest_path.parent) for p in rows[col]]
    save_manifest(finalize(rows, cfg.data.label_space, manifest_path.parent), manifest_path)
    return load_manifest(manifest_path, cfg.data.label_space)
