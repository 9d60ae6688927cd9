"""The offline HTML explorer of an embedding: one self-contained file (plotly.js embedded).

Hovering a point shows that cell's thumbnail, domain, label, prediction (when a predictions CSV
is given) and path; a lasso or box selection lists the selected cells with their thumbnails.
Domains and classes have palettes of their own, so no domain shares a colour with a class. The
file stays bounded: at most ``max_cells`` cells are drawn (a seeded random subset, stated in the
page), each with a small JPEG thumbnail (about 2 KB).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dorl.atomic import write_text_atomic
from dorl.data.images import ImageReadError, read_rgb
from dorl.data.taxonomy import UNKNOWN

logger = logging.getLogger(__name__)

_UNKNOWN_COLOUR = "#b0b0b0"
#: Palettes by what they colour: qualitative, and disjoint from each other.
PALETTES = {"domain": ("Dark2", "tab20b"), "class": ("tab10", "tab20")}
#: Cells listed with thumbnails for one selection (the count says how many were selected).
MAX_LISTED = 300


def colour_map(values, kind: str = "class") -> dict[str, str]:
    """Fixed colours for the sorted distinct ``values`` from ``kind``'s palette (``domain`` or
    ``class``); ``unknown`` is always grey."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = sorted(set(map(str, values)) - {UNKNOWN})
    small, large = PALETTES[kind]
    palette = colormaps[small if len(names) <= colormaps[small].N else large]
    colours = {n: to_hex(palette(i % palette.N)) for i, n in enumerate(names)}
    if UNKNOWN in set(map(str, values)):
        colours[UNKNOWN] = _UNKNOWN_COLOUR
    return colours


def thumbnail(path: Path, side: int) -> str | None:
    """A ``side`` px JPEG data URI of the image at ``path`` (None when it cannot be read)."""
    try:
        rgb = read_rgb(path)
    except ImageReadError:
        return None
    image = Image.fromarray(rgb)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_SCRIPT = """
const plot = document.getElementById('{plot_id}');
const card = document.getElementById('card'), list = document.getElementById('selection');
function describe(i) {
  const c = CELLS[i];
  const img = c.t ? `<img src="${c.t}" width="THUMB" height="THUMB">` : '<i>no image</i>';
  return `${img}<div><b>${c.l}</b> (${c.d})${c.y ? '<br>predicted: ' + c.y : ''}` +
         `<br><small>${c.p}</small></div>`;
}
plot.on('plotly_hover', ev => { card.innerHTML = describe(ev.points[0].customdata); });
plot.on('plotly_selected', ev => {
  const ids = ev ? [...new Set(ev.points.map(p => p.customdata))] : [];
  list.innerHTML = `<p>${ids.length} selected` +
    (ids.length > MAX ? `, the first ${MAX} listed` : '') + '</p>' +
    ids.slice(0, MAX).map(i => `<div class="cell">${describe(i)}</div>`).join('');
});
"""

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 8px; }}
#wrap {{ display: flex; gap: 12px; }}
#panel {{ width: 320px; flex: none; }}
#card, .cell {{ display: flex; gap: 8px; align-items: flex-start; margin-bottom: 6px; }}
#selection {{ max-height: 480px; overflow-y: auto; border-top: 1px solid #ccc; }}
small {{ color: #555; word-break: break-all; }}
</style></head><body>
<p>{note}</p>
<script>const CELLS = {cells};</script>
<div id="wrap">{plot}<div id="panel"><div id="card"><i>hover a point</i></div>
<div id="selection"><p>lasso or box select (toolbar) to list cells</p></div></div></div>
</body></html>
"""


def write_explorer(coords: np.ndarray, obs: pd.DataFrame, image_dir: Path | None, path: Path,
                   title: str, *, max_cells: int = 5000, thumb_px: int = 40,
                   predictions: pd.Series | None = None, seed: int = 0) -> Path:
    """Write the explorer of ``coords`` (n_cells, 2) with ``obs`` (domain, label, path).

    Parameters
    ----------
    coords : ndarray of shape (n_cells, 2)
    obs : DataFrame
        ``domain``, ``label`` and ``path`` per cell (index: cell ids).
    image_dir : Path or None
        The folder ``obs["path"]`` is relative to (the manifest's); None: no thumbnails.
    path : Path
    title : str
    max_cells : int, default=5000
        Cells drawn at most (a random subset seeded by ``seed``).
    thumb_px : int, default=40
    predictions : Series, optional
        Predicted labels by cell id (a ``dorl classify predict`` CSV).
    seed : int, default=0
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(coords)
    shown = np.arange(n)
    if n > max_cells:
        shown = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
    domains = obs["domain"].astype(str).to_numpy()[shown]
    labels = obs["label"].astype(str).to_numpy()[shown]
    paths = (obs["path"] if "path" in obs else obs.index.to_series()).astype(str).to_numpy()[shown]
    predicted = [""] * len(shown) if predictions is None else \
        [str(predictions.get(i, "")) for i in obs.index.astype(str)[shown]]
    thumbs = [thumbnail(image_dir / p, thumb_px) if image_dir is not None else None
              for p in paths]
    missing = sum(t is None for t in thumbs)
    if image_dir is not None and missing:
        logger.warning("%d of %d cells have no thumbnail (image missing or unreadable under %s)",
                       missing, len(shown), image_dir)
    cells = [{"t": t, "p": p, "d": d, "l": lab, "y": y}
             for t, p, d, lab, y in zip(thumbs, paths, domains, labels, predicted)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by domain", "by class"))
    for col, values, kind in ((1, domains, "domain"), (2, labels, "class")):
        for name, colour in colour_map(values, kind).items():
            mask = np.flatnonzero(values == name)
            fig.add_trace(go.Scattergl(
                x=coords[shown[mask], 0], y=coords[shown[mask], 1], mode="markers", name=name,
                legendgroup=kind, legendgrouptitle_text=kind, customdata=mask,
                marker={"size": 5, "color": colour}, hoverinfo="none"), row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", width=1100, height=560,
                      dragmode="lasso", hovermode="closest")
    script = _SCRIPT.replace("THUMB", str(thumb_px)).replace("MAX", str(MAX_LISTED))
    plot = fig.to_html(full_html=False, include_plotlyjs=True, post_script=script)
    note = (f"{len(shown):,} of {n:,} cells drawn (a random subset, seed {seed}; "
            f"umap.html_max_cells)" if len(shown) < n else f"all {n:,} cells drawn")
    data = json.dumps(cells).replace("</", "<\\/")
    write_text_atomic(path, _PAGE.format(title=html.escape(title), note=html.escape(note),
                                         cells=data, plot=plot))
    return path
