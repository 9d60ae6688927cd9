"""The explorer's size and opening time in a real browser (the system Chromium).

Writes the explorer of ``--cells`` cells with 40 px thumbnails of drawn cell images (each cell
has an image of its own, so every thumbnail is encoded), then opens it in headless Chromium and
times it until the plot has drawn (``document.body.dataset.ready``).

    .venv/bin/python bench/bench_explorer.py --cells 1200 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dorl.viz.explorer import write_explorer  # noqa: E402
from tests.browser import Page, find_chromium  # noqa: E402

READY = "document.body && document.body.dataset.ready === 'yes'"


def explorer(n: int, folder: Path, max_cells: int) -> Path:
    """The explorer of ``n`` cells in three labs, with an image per drawn cell."""
    rng = np.random.default_rng(0)
    drawn = min(n, max_cells)
    for i in range(drawn):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    obs = pd.DataFrame({"domain": np.array(["lab_a", "lab_b", "lab_c"])[np.arange(n) % 3],
                        "label": np.array(["neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                           "basophil"])[np.arange(n) % 5],
                        # cells beyond the drawn ones share the images (only drawn ones show)
                        "path": [f"{i % drawn}.png" for i in range(n)]},
                       index=[f"c{i}" for i in range(n)])
    return write_explorer(rng.normal(size=(n, 2)), obs, folder, folder / "umap.html",
                          f"{n} cells", max_cells=max_cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1200, 100000])
    parser.add_argument("--max-cells", type=int, default=5000, help="umap.html_max_cells")
    args = parser.parse_args()
    print("| cells | drawn | file MB | open in Chromium, s |")
    print("|---|---|---|---|")
    for n in args.cells:
        with tempfile.TemporaryDirectory() as tmp:
            path = explorer(n, Path(tmp), args.max_cells)
            page = Page(find_chromium())
            try:
                t0 = time.perf_counter()
                page.open(path, READY, timeout=120)
                seconds = time.perf_counter() - t0
                assert not page.errors, page.errors
            finally:
                page.close()
            print(f"| {n:,} | {min(n, args.max_cells):,} | {path.stat().st_size / 1e6:.1f} | "
                  f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
