"""The offline HTML explorer of an embedding: one self-contained file (plotly.js embedded).

The plot fills the window. Hovering a point shows that cell's thumbnail, domain, label,
prediction and confidence (when a predictions CSV is given), QC reason and path; a lasso or box
selection lists the selected cells with their thumbnails. The cells are coloured by domain,
class, prediction, confidence or QC flag; a legend click hides that group, and a search box
finds a cell by file name. The labelling loop: a selection can be given a class, and the page
downloads the labels as a plain ``path,label`` CSV for ``classify.target_labels``.

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
from dorl.featstore import cell_paths

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


#: The page's script: it runs at the end of the body, once every element it uses exists.
_SCRIPT = r"""
const plot = document.getElementById('umap'), card = document.getElementById('card'),
      list = document.getElementById('selection'), status = document.getElementById('labelled');
const LABELS = {};
let colourBy = document.getElementById('colour').value, selected = [], found = null;
const KEY = {domain: c => c.d, class: c => c.l, prediction: c => c.y || '(none)',
             qc: c => c.q || 'pass'};
function esc(s) {
  return String(s).replace(/[&<>"]/g, ch => ({'&': '&amp;', '<': '&lt;', '>': '&gt;',
                                                  '"': '&quot;'}[ch]));
}
function describe(i) {
  const c = CELLS[i];
  const img = c.t ? `<img src="${c.t}" width="${THUMB}" height="${THUMB}">` : '<i>no image</i>';
  const extra = (c.y ? `<br>predicted: ${esc(c.y)}` : '') +
    (c.c !== undefined && c.c !== null ? ` (${(100 * c.c).toFixed(0)}%)` : '') +
    (c.q ? `<br>QC: ${esc(c.q)}` : '') + (LABELS[c.p] ? `<br>your label: ${esc(LABELS[c.p])}` : '');
  return `${img}<div><b>${esc(c.l)}</b> (${esc(c.d)})${extra}<br><small>${esc(c.p)}</small></div>`;
}
function traces() {
  const out = [];
  if (colourBy === 'confidence') {
    const idx = CELLS.map((c, i) => i);
    out.push({type: 'scattergl', mode: 'markers', name: 'confidence', customdata: idx,
              x: idx.map(i => CELLS[i].x), y: idx.map(i => CELLS[i].v), hoverinfo: 'none',
              marker: {size: 5, color: idx.map(i => CELLS[i].c), colorscale: 'Viridis',
                       cmin: 0, cmax: 1, showscale: true}});
  } else {
    const groups = {};
    CELLS.forEach((c, i) => { const k = KEY[colourBy](c); (groups[k] = groups[k] || []).push(i); });
    for (const k of Object.keys(groups).sort()) {
      const idx = groups[k];
      out.push({type: 'scattergl', mode: 'markers', name: k, customdata: idx, hoverinfo: 'none',
                x: idx.map(i => CELLS[i].x), y: idx.map(i => CELLS[i].v),
                marker: {size: 5, color: (COLOURS[colourBy] || {})[k] || '#888'}});
    }
  }
  if (found !== null) {
    out.push({type: 'scattergl', mode: 'markers', name: 'found', customdata: [found],
              x: [CELLS[found].x], y: [CELLS[found].v], hoverinfo: 'none', showlegend: false,
              marker: {size: 16, color: 'rgba(0,0,0,0)', line: {width: 3, color: 'red'}}});
  }
  return out;
}
const LAYOUT = {template: 'plotly_white', dragmode: 'lasso', hovermode: 'closest',
                margin: {l: 30, r: 10, t: 30, b: 30}, legend: {itemsizing: 'constant'},
                uirevision: 'keep', xaxis: {showticklabels: false},
                yaxis: {showticklabels: false}};
function draw() { return Plotly.react(plot, traces(), LAYOUT, {responsive: true}); }
function showSelection() {
  list.innerHTML = `<p>${selected.length} selected` +
    (selected.length > MAX ? `, the first ${MAX} listed` : '') + '</p>' +
    selected.slice(0, MAX).map(i => `<div class="cell">${describe(i)}</div>`).join('');
}
window.labelsCsv = function () {
  const q = v => /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  return 'path,label\n' + Object.keys(LABELS).sort().map(p => `${q(p)},${q(LABELS[p])}\n`)
    .join('');
};
document.getElementById('colour').addEventListener('change', ev => {
  colourBy = ev.target.value; draw();
});
document.getElementById('search').addEventListener('input', ev => {
  const text = ev.target.value.trim().toLowerCase();
  const i = text ? CELLS.findIndex(c => c.p.toLowerCase().includes(text)) : -1;
  found = i >= 0 ? i : null;
  card.innerHTML = i >= 0 ? describe(i) : (text ? '<i>no cell matches</i>' : '');
  draw();
});
document.getElementById('assign').addEventListener('click', () => {
  const label = document.getElementById('label').value.trim();
  if (!label || !selected.length) return;
  selected.forEach(i => { LABELS[CELLS[i].p] = label; });
  status.textContent = `${Object.keys(LABELS).length} cells labelled`;
  showSelection();
});
document.getElementById('download').addEventListener('click', () => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([labelsCsv()], {type: 'text/csv'}));
  a.download = 'my_labels.csv';
  document.body.appendChild(a); a.click(); a.remove();
});
draw().then(() => {
  plot.on('plotly_hover', ev => { card.innerHTML = describe(ev.points[0].customdata); });
  plot.on('plotly_selected', ev => {
    selected = ev ? [...new Set(ev.points.map(p => p.customdata))] : [];
    showSelection();
  });
  document.body.dataset.ready = 'yes';
});
"""

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
html, body {{ height: 100%; margin: 0; font-family: sans-serif; }}
body {{ display: flex; flex-direction: column; }}
header {{ padding: 6px 10px; font-size: 14px; }}
#wrap {{ display: flex; flex: 1; min-height: 0; gap: 10px; padding: 0 10px 10px; }}
#umap {{ flex: 1; min-width: 0; }}
#panel {{ width: 340px; flex: none; display: flex; flex-direction: column; min-height: 0; }}
#card, .cell {{ display: flex; gap: 8px; align-items: flex-start; margin-bottom: 6px; }}
#selection {{ flex: 1; overflow-y: auto; border-top: 1px solid #ccc; }}
small {{ color: #555; word-break: break-all; }}
</style>
<script>{plotly}</script></head><body>
<header><b>{title}</b><br>{note}. Colour by
<select id="colour">{options}</select>
&nbsp;Find a cell <input id="search" placeholder="file name" size="24"></header>
<div id="wrap"><div id="umap"></div><div id="panel">
<div id="card"><i>hover a point; lasso or box select (toolbar) to list cells; click a legend
entry to hide that group</i></div>
<div>Label the selection <input id="label" list="classes" size="14">
<datalist id="classes">{classes}</datalist>
<button id="assign">label</button> <button id="download">download CSV</button>
<span id="labelled"></span></div>
<div id="selection"></div></div></div>
<script>const CELLS = {cells}; const COLOURS = {colours};
const THUMB = {thumb}, MAX = {max_listed};</script>
<script>{script}</script>
</body></html>
"""


def write_explorer(coords: np.ndarray, obs: pd.DataFrame, image_dir: Path | None, path: Path,
                   title: str, *, max_cells: int = 5000, thumb_px: int = 40,
                   predictions: pd.DataFrame | None = None, seed: int = 0) -> Path:
    """Write the explorer of ``coords`` (n_cells, 2) with ``obs`` (domain, label, path).

    Parameters
    ----------
    coords : ndarray of shape (n_cells, 2)
    obs : DataFrame
        ``domain``, ``label`` and ``path`` per cell (index: cell ids), and ``qc_reason`` when
        the cells were quality-checked.
    image_dir : Path or None
        The folder ``obs["path"]`` is relative to (the manifest's); None: no thumbnails.
    path : Path
    title : str
    max_cells : int, default=5000
        Cells drawn at most (a random subset seeded by ``seed``).
    thumb_px : int, default=40
    predictions : DataFrame, optional
        Indexed by cell id: ``predicted`` and, when known, ``confidence`` in [0, 1] (from a
        ``dorl classify predict`` CSV).
    seed : int, default=0
    """
    import plotly

    n = len(coords)
    shown = np.arange(n)
    if n > max_cells:
        shown = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
    domains = obs["domain"].astype(str).to_numpy()[shown]
    labels = obs["label"].astype(str).to_numpy()[shown]
    paths = cell_paths(obs)[shown]
    ids = obs.index.astype(str)[shown]
    predicted = [""] * len(shown) if predictions is None else \
        [str(predictions["predicted"].get(i, "")) for i in ids]
    confidence = [None] * len(shown)
    if predictions is not None and "confidence" in predictions:
        confidence = [None if pd.isna(v) else round(float(v), 3)
                      for v in (predictions["confidence"].get(i) for i in ids)]
    qc = obs["qc_reason"].astype(str).to_numpy()[shown] if "qc_reason" in obs else None
    thumbs = [thumbnail(image_dir / p, thumb_px) if image_dir is not None else None
              for p in paths]
    missing = sum(t is None for t in thumbs)
    if image_dir is not None and missing:
        logger.warning("%d of %d cells have no thumbnail (image missing or unreadable under %s)",
                       missing, len(shown), image_dir)
    cells = []
    for k, (t, p, d, lab, y, c) in enumerate(zip(thumbs, paths, domains, labels, predicted,
                                                 confidence)):
        cell = {"t": t, "p": p, "d": d, "l": lab, "y": y, "c": c,
                "x": round(float(coords[shown[k], 0]), 4),
                "v": round(float(coords[shown[k], 1]), 4)}
        if qc is not None:
            cell["q"] = qc[k]
        cells.append(cell)
    colours = {"domain": colour_map(domains, "domain"), "class": colour_map(labels, "class")}
    options = ["domain", "class"]
    if predictions is not None:
        colours["prediction"] = colour_map([y or "(none)" for y in predicted], "class")
        options.append("prediction")
        if any(c is not None for c in confidence):
            options.append("confidence")
    if qc is not None:
        colours["qc"] = colour_map([q or "pass" for q in qc], "domain")
        options.append("qc")
    note = (f"{len(shown):,} of {n:,} cells drawn (a random subset, seed {seed}; "
            f"umap.html_max_cells)" if len(shown) < n else f"all {n:,} cells drawn")
    classes = sorted(set(labels) - {UNKNOWN})

    def data(value) -> str:
        # No <, > or & reaches the script block: `</script>` and `<!--` in a file name would
        # end it or turn the rest into a comment. The escapes read back as the same strings.
        return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
                .replace("&", "\\u0026"))

    page = _PAGE.format(
        title=html.escape(title), note=html.escape(note), plotly=plotly.offline.get_plotlyjs(),
        options="".join(f'<option value="{o}">{o}</option>' for o in options),
        classes="".join(f'<option value="{html.escape(c)}">' for c in classes),
        cells=data(cells), colours=data(colours), thumb=int(thumb_px), max_listed=MAX_LISTED,
        script=_SCRIPT)
    write_text_atomic(path, page)
    return path
