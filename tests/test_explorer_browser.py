"""The explorer of a real tiny run, in a real headless Chromium: what a user does with it."""

from __future__ import annotations


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
    assert options == ["domain", "class", "prediction", "confidence"]
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
