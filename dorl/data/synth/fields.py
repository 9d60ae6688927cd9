"""Synthetic whole fields: each lab's drawn cells tiled into fields, with Pascal VOC box files.

A field is a ``grid`` x ``grid`` mosaic of one lab's cell images (:func:`draw_cell`, with the
red cells and background each image already holds); each white cell's box is its true mask's
bounding box in the field. The fields go to ``<out>/<lab>/images/field_NNN.png`` and their boxes,
named by class, to ``<out>/<lab>/labels/field_NNN.xml``, the layout a ``fields`` source reads.
Every tile has its own random generator, seeded by (seed, lab, field, tile).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dorl.atomic import atomic_path
from dorl.data.synth.cells import draw_cell
from dorl.data.synth.domains import domain_style
from dorl.data.synth.generate import domain_key, class_counts

logger = logging.getLogger(__name__)


def compose_fields(out_dir: str | Path, domains: list[str], n_fields: int, grid: int,
                   tile: int, class_weights: dict[str, float], seed: int) -> int:
    """Write ``n_fields`` fields of ``grid`` x ``grid`` cells of side ``tile`` for every lab in
    ``domains``; return the number of white cells written."""
    out_dir = Path(out_dir)
    n_cells = 0
    for name in tqdm(domains, desc="synthetic fields", unit="lab", leave=False):
        style, key = domain_style(name), domain_key(name)
        counts = class_counts(n_fields * grid * grid, dict(class_weights))
        classes = np.random.default_rng([seed, key, 1]).permutation(
            np.repeat(list(counts), list(counts.values())))
        for f in range(n_fields):
            field = np.zeros((grid * tile, grid * tile, 3), np.uint8)
            objects = []
            for t in range(grid * grid):
                cls = str(classes[f * grid * grid + t])
                image, mask = draw_cell(cls, style, tile, np.random.default_rng([seed, key, f, t]))
                top, left = (t // grid) * tile, (t % grid) * tile
                field[top:top + tile, left:left + tile] = image
                ys, xs = np.nonzero(mask)
                objects.append(
                    f"<object><name>{cls}</name><bndbox><xmin>{left + xs.min() + 1}</xmin>"
                    f"<ymin>{top + ys.min() + 1}</ymin><xmax>{left + xs.max() + 1}</xmax>"
                    f"<ymax>{top + ys.max() + 1}</ymax></bndbox></object>")
            stem = f"field_{f:03d}"
            for folder in ("images", "labels"):
                (out_dir / name / folder).mkdir(parents=True, exist_ok=True)
            with atomic_path(out_dir / name / "images" / f"{stem}.png") as tmp:
                Image.fromarray(field).save(tmp, format="PNG")
            with atomic_path(out_dir / name / "labels" / f"{stem}.xml") as tmp:
                tmp.write_text(f"<annotation><filename>{stem}.png</filename>"
                               f"{''.join(objects)}</annotation>")
            n_cells += len(objects)
    logger.info("synthetic fields: %d fields of %d labs, %d white cells, in %s",
                n_fields * len(domains), len(domains), n_cells, out_dir)
    return n_cells
