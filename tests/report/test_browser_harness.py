"""The report-test harness (browser.py) on small hand-written pages: does it see what a report shows?"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ReportError, pixels

READY = 'document.documentElement.dataset.ready = "true";'
# Plotly's own promise says when the drawing is done, as the report's pages use it.
LINE = """Plotly.newPlot(document.querySelector('[data-chart="loss"]'),
  [{x: [0, 1, 2, 3, 4], y: [2.3, 1.1, 0.7, 0.5, 0.4], type: "scatter", mode: "lines"}],
  {margin: {t: 10}})"""
HEATMAP = """Plotly.newPlot(document.querySelector('[data-chart="flow"]'),
  [{z: [[1e-6, 1e-4, 1e-2], [1e-5, 1e-3, 1e-1]], type: "heatmap"}], {margin: {t: 10}})"""


@pytest.fixture(scope="module")
def plotly_js() -> str:
    from gradwatch.report.page import plotly_js

    return plotly_js()  # the bundle reports inline


def page(tmp_path: Path, body: str, script: str = READY, *, plotly: str = "", name: str = "page.html") -> Path:
    path = tmp_path / name
    head = f"<script>{plotly}</script>" if plotly else ""
    html = f"<!doctype html><html><head><meta charset='utf-8'>{head}</head>"
    path.write_text(f"{html}<body>{body}<script>{script}</script></body></html>")
    return path


def test_console_errors_and_uncaught_exceptions_are_reported(report_browser, tmp_path):
    script = 'console.error("boom: the chart data is missing"); setTimeout(() => { throw new Error("kaboom"); });'
    script += 'setTimeout(() => { document.documentElement.dataset.ready = "true"; }, 50);'
    result = report_browser.open(page(tmp_path, "<p>hi</p>", script))
    assert any("boom: the chart data is missing" in e for e in result.console_errors), result.console_errors
    assert any(e.startswith("pageerror") and "kaboom" in e for e in result.console_errors), result.console_errors
    assert result.network == []
    assert result.text == "hi"


def test_a_clean_page_has_no_errors_and_no_requests(report_browser, tmp_path):
    body = '<section id="summary"><h2>Summary</h2><p>3 of 8 runs lost their gradients.</p></section>'
    result = report_browser.open(page(tmp_path, body))
    assert result.console_errors == []
    assert result.network == []
    assert result.summary == "Summary\n\n3 of 8 runs lost their gradients."
    assert result.charts == []


def test_network_requests_are_recorded_and_blocked(report_browser, tmp_path):
    body = '<script src="https://example.com/x.js"></script><img src="http://example.org/logo.png">'
    script = 'fetch("https://cdn.example.net/data.json").catch(() => {}).finally(() => { ' + READY + " });"
    result = report_browser.open(page(tmp_path, body, script))
    assert sorted(result.network) == [
        "http://example.org/logo.png",
        "https://cdn.example.net/data.json",
        "https://example.com/x.js",
    ]
    # Blocked, so they failed: the page could not depend on them without the tests seeing it.
    assert any("example.com/x.js" in e for e in result.console_errors)


def test_plotly_charts_are_drawn_and_nonblank(report_browser, tmp_path, plotly_js):
    body = '<div class="gw-chart" data-chart="loss" style="width:600px;height:350px"></div>'
    body += '<div class="gw-chart" data-chart="flow" style="width:600px;height:350px"></div>'
    script = f"Promise.all([{LINE}, {HEATMAP}]).then(() => {{ {READY} }});"
    result = report_browser.open(page(tmp_path, body, script, plotly=plotly_js))
    assert result.console_errors == []
    assert result.network == []
    assert [c.name for c in result.charts] == ["loss", "flow"]
    for chart in result.charts:
        assert chart.visible, chart
        assert chart.drawn, chart
        assert chart.nonblank, chart
        assert chart.colours > 4, chart
    assert 0 < result.ready_seconds < 30


def test_an_empty_chart_div_is_neither_drawn_nor_nonblank(report_browser, tmp_path):
    body = '<div class="gw-chart" data-chart="empty" style="width:600px;height:350px"></div>'
    body += '<div class="gw-chart" data-chart="collapsed"></div>'
    result = report_browser.open(page(tmp_path, body))
    empty, collapsed = result.chart("empty"), result.chart("collapsed")
    assert empty.visible
    assert not empty.drawn
    assert not empty.nonblank
    assert empty.colours == 1
    assert empty.ink == 0.0
    assert not collapsed.visible
    assert not collapsed.drawn
    assert not collapsed.nonblank


def test_axes_without_traces_are_not_drawn(report_browser, tmp_path, plotly_js):
    body = '<div class="gw-chart" data-chart="loss" style="width:600px;height:350px"></div>'
    script = f"Plotly.newPlot(document.querySelector('.gw-chart'), [], {{}}).then(() => {{ {READY} }});"
    chart = report_browser.open(page(tmp_path, body, script, plotly=plotly_js)).chart("loss")
    assert not chart.drawn  # Plotly drew its SVG (axes, grid) but no trace


def test_ready_seconds_counts_from_navigation_start(report_browser, tmp_path):
    script = 'setTimeout(() => { document.documentElement.dataset.ready = "true"; }, 400);'
    result = report_browser.open(page(tmp_path, "", script))
    assert 0.4 <= result.ready_seconds < 10


def test_data_error_fails_fast(report_browser, tmp_path):
    script = 'console.error("TypeError: z is undefined"); document.documentElement.dataset.error = "z is undefined";'
    with pytest.raises(ReportError, match=r"data-error: z is undefined(.|\n)*TypeError: z is undefined"):
        report_browser.open(page(tmp_path, "", script), timeout=20)


def test_a_page_that_never_gets_ready_times_out(report_browser, tmp_path):
    with pytest.raises(ReportError, match="not ready after 1"):
        report_browser.open(page(tmp_path, "<p>loading</p>", ""), timeout=1)


def test_run_sections_draw_when_opened(report_browser, tmp_path, plotly_js):
    runs = "".join(
        f'<details class="gw-run" data-run="{run}"><summary>run {run}</summary>'
        f'<div class="gw-chart" data-chart="grad-norms" style="width:500px;height:300px"></div></details>'
        for run in ("abc123", "def456")
    )
    draw = """
    for (const run of document.querySelectorAll("details.gw-run")) {
      run.addEventListener("toggle", () => {
        if (!run.open || run.dataset.ready) return;
        Plotly.newPlot(run.querySelector(".gw-chart"), [{y: [1, 0.1, 0.01], type: "bar"}], {margin: {t: 10}})
          .then(() => { run.dataset.ready = "true"; });
      });
    }
    """
    path = page(tmp_path, runs, draw + READY, plotly=plotly_js)

    closed = report_browser.open(path)
    assert [(c.visible, c.drawn, c.nonblank) for c in closed.charts] == [(False, False, False)] * 2
    assert closed.runs_opened == {}

    one = report_browser.open(path, open_runs=["def456"])
    assert list(one.runs_opened) == ["def456"]
    assert [c.drawn for c in one.charts] == [False, True]

    both = report_browser.open(path, open_runs=True)
    assert list(both.runs_opened) == ["abc123", "def456"]
    assert all(c.drawn and c.nonblank for c in both.charts), both.charts
    assert both.console_errors == []


def test_run_section_that_never_gets_ready_fails(report_browser, tmp_path):
    body = '<details class="gw-run" data-run="r1"><summary>run r1</summary><p>nothing</p></details>'
    with pytest.raises(ReportError, match="run section 'r1' not ready"):
        report_browser.open(page(tmp_path, body), open_runs=True, timeout=1)


def test_pixels_counts_colours_and_ink():
    import io

    from PIL import Image

    image = Image.new("RGB", (10, 10), "white")
    image.putpixel((0, 0), (255, 0, 0))
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert pixels(png.getvalue()) == (2, 0.01)
