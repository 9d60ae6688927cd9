"""The explorer of a real tiny run, in a real headless Chromium: what a user does with it."""

from __future__ import annotations


import json

import pandas as pd
import pytest

from tests.browser import Page, find_chromium

READY = "document.body && document.body.dataset.ready === 'yes'"
#: The page position of cell ``i`` (CSS pixels), from plotly's own axes.
POSITION = """(i => {
  const fl = umap._fullLayout, r = umap.getBoundingClientRect(), c = CELLS[i];
  return [r.left + fl._size.l + fl.xaxis.l2p(c.x), r.top + fl._size.t + fl.yaxis.l2p(c.v)];
})(%d)"""


@pytest.fixture
def page():
    browser = Page(find_chromium())
    yield browser
    browser.close()


def _drag(page: Page, start, end, steps: int = 8) -> None:
    page.mouse("mouseMoved", *start)
    page.mouse("mousePressed", *start, buttons=1)
    for k in range(1, steps + 1):
        page.mouse("mouseMoved", start[0] + (end[0] - start[0]) * k / steps,
                   start[1] + (end[1] - start[1]) * k / steps, buttons=1)
    page.mouse("mouseReleased", *end)


def test_hover_select_colour_hide_and_search_in_chromium(finished_run, page):
    html = finished_run.run_dir / "umap" / "umap.html"
    page.open(html, READY)
    # The plot fills the window below the header.
    plot_h, window_h = page.evaluate("[umap.getBoundingClientRect().bottom, innerHeight]")
    assert plot_h > 0.9 * window_h

    x, y = page.evaluate(POSITION % 0)
    page.mouse("mouseMoved", x, y)
    page.wait_for("card.querySelector('img') && card.querySelector('img').complete")
    cell = page.evaluate("CELLS[0]")
    card = page.evaluate("card.innerHTML")
    assert page.evaluate("card.querySelector('img').naturalWidth") > 0
    assert cell["p"] in card and f"<b>{cell['l']}</b>" in card and "predicted:" in card

    page.evaluate("Plotly.relayout(umap, {dragmode: 'select'}).then(() => true)")
    left, top, right, bottom = page.evaluate(
        "(r => [r.left, r.top, r.right, r.bottom])(umap.querySelector('.nsewdrag')"
        ".getBoundingClientRect())")
    _drag(page, (left + 5, top + 5), (right - 5, bottom - 5))
    page.wait_for("selection.querySelectorAll('.cell').length > 0")
    n = page.evaluate("selection.querySelectorAll('.cell').length")
    assert f"{n} selected" in page.evaluate("selection.innerHTML")
    page.wait_for("[...selection.querySelectorAll('img')].every(i => i.complete)")
    assert page.evaluate("[...selection.querySelectorAll('img')].every(i => i.naturalWidth > 0)")

    options = page.evaluate("[...document.getElementById('colour').options].map(o => o.value)")
    assert options == ["domain", "class", "prediction", "confidence", "qc"]
    for option in options:
        page.evaluate(f"(s => {{ s.value = '{option}'; s.dispatchEvent(new Event('change')); }})"
                      f"(document.getElementById('colour'))")
        page.wait_for("umap.data.length > 0")
        if option == "class":
            classes = sorted(set(pd.read_csv(finished_run.predictions)["label"]))
            assert page.evaluate("umap.data.map(t => t.name)") == classes

    page.evaluate("(s => { s.value = 'domain'; s.dispatchEvent(new Event('change')); })"
                  "(document.getElementById('colour'))")
    lx, ly = page.evaluate("(r => [r.left + 15, r.top + r.height / 2])(umap.querySelector("
                           "'.legend .traces').getBoundingClientRect())")
    page.mouse("mousePressed", lx, ly, buttons=1)
    page.mouse("mouseReleased", lx, ly)
    page.wait_for("umap.data[0].visible === 'legendonly'")

    name = cell["p"].rsplit("/", 1)[-1]
    page.evaluate(f"(s => {{ s.value = '{name}'; s.dispatchEvent(new Event('input')); }})"
                  f"(document.getElementById('search'))")
    page.wait_for("umap.data.some(t => t.name === 'found')")
    assert cell["p"] in page.evaluate("card.innerHTML")
    assert page.errors == []


def test_the_labelling_loop_from_the_page_to_a_better_score(tmp_path, page):
    """Label a few cells of a shifted lab in the page, download the CSV, classify again: the
    lab's score rises above the cross-domain one."""
    from omegaconf import OmegaConf

    from dorl.classify.run import classify_from_config
    from dorl.config import load_config
    from dorl.featstore import read_features
    from dorl.viz.explorer import write_explorer
    from tests.helpers import synthetic_features

    # Lab c's classes sit where other classes sit in labs a and b: only its own labels help.
    path = synthetic_features(tmp_path / "f.h5ad", n_per_domain=60, dim=6, seed=3,
                              permute_domain="lab_c")
    fs = read_features(path)
    html = write_explorer(fs.X[:, :2], fs.obs, None, tmp_path / "umap.html", "loop")
    page.set_downloads(tmp_path / "downloads")
    page.open(html, READY)
    page.evaluate("Plotly.relayout(umap, {dragmode: 'select'}).then(() => true)")
    cells = page.evaluate("CELLS.map((c, i) => [i, c.d, c.l])")
    chosen = {}
    for i, domain, label in cells:
        if domain == "lab_c" and len(chosen.setdefault(label, [])) < 3:
            chosen[label].append(i)
    for label, rows in chosen.items():
        for i in rows:
            x, y = page.evaluate(POSITION % i)
            _drag(page, (x - 6, y - 6), (x + 6, y + 6), steps=1)  # plotly: drags >= 8 px
            page.wait_for(f"selection.innerHTML.includes({json.dumps(cells[i][2])})")
            page.evaluate(f"document.getElementById('label').value = {json.dumps(label)}")
            box = page.evaluate("(r => [r.left + 5, r.top + 5])(document.getElementById('assign')"
                                ".getBoundingClientRect())")
            page.mouse("mousePressed", *box, buttons=1)
            page.mouse("mouseReleased", *box)
    box = page.evaluate("(r => [r.left + 5, r.top + 5])(document.getElementById('download')"
                        ".getBoundingClientRect())")
    page.mouse("mousePressed", *box, buttons=1)
    page.mouse("mouseReleased", *box)
    csv_path = page.downloaded("my_labels.csv")
    labels = pd.read_csv(csv_path)
    assert list(labels.columns) == ["path", "label"]
    truth = fs.obs.set_index("path")["label"]
    assert (labels["label"].to_numpy() == truth[labels["path"]].to_numpy()).mean() >= 0.9
    assert page.errors == []

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"classify.features={{dorl: {path}}}",
                             "classify.classifiers=[knn]", "classify.few_shot.classifiers=[knn]",
                             "classify.protocols=[source_target]",
                             "classify.sources=[lab_a]", "classify.adaptations=[none]",
                             f"classify.target_labels={csv_path}", "classify.n_folds=2"])
    out = classify_from_config(cfg)
    results = pd.read_csv(out / "results.csv")
    f1 = results[(results["metric"] == "macro_f1") & (results["scope"] == "shared")
                 & (results["label"].fillna("") == "") & (results["target"] == "lab_c")]
    with_labels = f1.loc[f1["protocol"] == "target_labels", "value"].mean()
    without = f1.loc[f1["protocol"] == "source_target", "value"].mean()
    assert with_labels > without + 0.2, (with_labels, without)
    assert "Your labelled target cells" in (out / "results.md").read_text()
    assert OmegaConf.select(cfg, "classify.target_labels") == str(csv_path)


def test_any_file_name_comes_back_as_it_is_and_runs_nothing(tmp_path, page):
    """Names that would end the data's script block or open an HTML comment in it."""
    import numpy as np

    from dorl.viz.explorer import write_explorer

    names = ["<!--<script>.png", "</script><b id='injected'>x</b>.png", "a & b \"quoted\".png",
             "<img src=x onerror=document.title='ran'>.png", "plain.png"]
    obs = pd.DataFrame({"domain": ["lab_a", "lab_b"] * 5, "label": ["monocyte"] * 10,
                        "path": [f"{i}_{n}" for i, n in enumerate(names * 2)]},
                       index=[str(i) for i in range(10)])
    coords = np.random.default_rng(0).normal(size=(10, 2))
    html = write_explorer(coords, obs, None, tmp_path / "umap.html", "names")
    page.open(html, READY)
    assert page.evaluate("CELLS.map(c => c.p)") == list(obs["path"])
    assert page.evaluate("document.getElementById('injected') === null")
    assert page.evaluate("document.title") == "names"
    assert page.errors == []
