"""The report as one self-contained HTML page: plotly.js inlined, the figures as JSON, no network needed to open it.

Sweep overviews are drawn as the page loads; each run's charts are drawn when its section is opened, so a
64-run sweep opens in the time of its two overview charts. The page sets ``data-ready="true"`` on ``<html>`` when
its first charts are drawn (and on a run's ``<details>`` when that run's are), and ``data-error`` if drawing fails.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from gradwatch.report import figures as fig
from gradwatch.report.format import finite_or_none, format_value, short
from gradwatch.report.runs import Collection, Run, Sweep
from gradwatch.report.summary import runs_summary, sweep_summary
from gradwatch.rundir import describe_health

#: Largest GAN sample grid inlined into a run's section (a 64-run sweep of large grids would outgrow the page).
MAX_SAMPLES_BYTES = 256 * 1024
#: The vendored plotly.js file.
PLOTLY_JS = "plotly-cartesian.min.js"
#: The first bytes of every PNG file: a samples file without them would be a broken image in the page.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 24px 48px; color: #222; }
h1 { font-size: 22px; margin: 20px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; } h3 { font-size: 15px; }
.meta { color: #666; margin: 0 0 12px; }
.advice { background: #fdf0f0; border-left: 4px solid #b03030; margin: 0 0 12px; padding: 4px 12px; }
#summary { background: #f5f7fa; border-left: 4px solid #3b6fb6; padding: 6px 16px; }
#summary li { margin: 4px 0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: left; white-space: nowrap; }
th { background: #fafafa; position: sticky; top: 0; }
table.gw-sortable th { cursor: pointer; user-select: none; }
table.gw-sortable th[data-dir="asc"]::after { content: " ▲"; }
table.gw-sortable th[data-dir="desc"]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b03030; font-weight: 600; } .swept { background: #fff6d5; }
.gw-chart { min-height: 120px; margin: 8px 0; }
.gw-samples img { image-rendering: pixelated; width: 292px; border: 1px solid #ddd; }
.gw-samples figcaption { color: #666; font-size: 12px; }
details.gw-run { border: 1px solid #ddd; border-radius: 6px; margin: 6px 0; padding: 0 12px; }
details.gw-run > summary { cursor: pointer; padding: 8px 0; }
details.gw-config > summary { cursor: pointer; color: #555; }
.results { max-height: 480px; overflow: auto; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var root = document.documentElement;
  var parsed = {};
  function figure(div) {
    var source = div.dataset.source;
    if (!parsed[source]) parsed[source] = JSON.parse(document.getElementById(source).textContent);
    return parsed[source][div.dataset.chart];
  }
  var options = {displaylogo: false, responsive: true};
  function fail(error) {
    root.dataset.error = String((error && error.message) || error);
    console.error(error);
  }
  function draw(scope) {
    var divs = Array.prototype.filter.call(scope.querySelectorAll(".gw-chart"), function (div) {
      return !div.dataset.drawn && !div.closest("details:not([open])");
    });
    return Promise.all(divs.map(function (div) {
      div.dataset.drawn = "true";
      var drawing = figure(div);
      return Plotly.newPlot(div, drawing.data, drawing.layout, options);
    }));
  }
  document.querySelectorAll("details.gw-run").forEach(function (run) {
    run.addEventListener("toggle", function () {
      if (run.open) draw(run).then(function () { run.dataset.ready = "true"; }, fail);
    });
  });
  document.querySelectorAll("a.gw-run-link").forEach(function (link) {
    link.addEventListener("click", function () {
      var run = document.getElementById(link.getAttribute("href").slice(1));
      if (run) run.open = true;
    });
  });
  document.querySelectorAll("table.gw-sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, column) {
      th.addEventListener("click", function () {
        var dir = th.dataset.dir === "asc" ? "desc" : "asc";
        table.querySelectorAll("th").forEach(function (other) { delete other.dataset.dir; });
        th.dataset.dir = dir;
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
          var nx = parseFloat(x), ny = parseFloat(y), order;
          if (x === "" || y === "") order = (x === "") - (y === "");
          else if (!isNaN(nx) && !isNaN(ny)) order = nx - ny;
          else order = x.localeCompare(y);
          return dir === "asc" ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  try {
    draw(document).then(function () {
      document.querySelectorAll("details.gw-run[open]").forEach(function (run) { run.dataset.ready = "true"; });
      root.dataset.ready = "true";
    }, fail);
  } catch (error) { fail(error); }
})();
"""


class _Page:
    """Collects the page's figures as its HTML is written, in groups: a sweep's overview, and each run.

    The page parses a group only when it draws it, so a 64-run sweep opens without reading 64 runs' data.
    """

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, fig.Figure]] = {}

    def chart(self, group: str, name: str, figure: fig.Figure) -> str:
        self.groups.setdefault(group, {})[name] = figure
        return f'<div class="gw-chart" data-source="gw-data-{escape(group)}" data-chart="{escape(name)}"></div>'

    def data(self) -> str:
        """One JSON script element per group."""
        return "".join(
            f'<script type="application/json" id="gw-data-{escape(group)}">{_json(figures)}</script>'
            for group, figures in self.groups.items()
        )


def _json(value: object) -> str:
    # "</" would end the script element early; JSON allows "\/" in its place.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _number(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return fmt.format(value)


def _cell(value: Any, text: str | None = None, *, numeric: bool = False, css: str = "") -> str:
    sort = "" if value is None else str(value)
    classes = " ".join(c for c in ("num" if numeric else "", css) if c)
    shown = escape(text if text is not None else ("—" if value is None else str(value)))
    attribute = f' class="{classes}"' if classes else ""
    return f'<td data-sort="{escape(sort)}"{attribute}>{shown}</td>'


def _health_text(run: Run) -> str:
    health = run.health()
    return describe_health(health) if health else "not measured"


def _link_cell(run: Run, anchor: str) -> str:
    link = f'<a class="gw-run-link" href="#{anchor}">{escape(run.id)}</a>'
    return f'<td data-sort="{escape(run.id)}">{link}</td>'


def _results_table(sweep: Sweep, anchors: dict[int, str]) -> str:
    names = sweep.axes
    head = ["#", "run", *(short(n) for n in names)]
    head += [f"{sweep.metric} ({sweep.goal})" if sweep.metric else "metric", "gradients", "attenuation", "state"]
    rows = []
    for rank, run in enumerate(sweep.ranked(), start=1):
        health = _health_text(run)
        value, attenuation = sweep.value(run), run.health().get("attenuation")
        cells = [
            _cell(rank, numeric=True),
            _link_cell(run, anchors[id(run)]),
            *(_cell(run.params.get(n), format_value(run.params.get(n))) for n in names),
            _cell(finite_or_none(value), _number(value), numeric=True),
            _cell(health, css="bad" if run.verdicts() else ""),
            _cell(finite_or_none(attenuation), _number(attenuation, "{:.2f}"), numeric=True),
            _cell(run.state or "", (run.state or "—") + (f": {run.error}" if run.error else "")),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<div class="results"><table class="gw-sortable gw-results"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _config_table(run: Run) -> str:
    config = run.config
    if not config:
        return '<p class="meta">No saved config (config.yaml or hparams.yaml).</p>'
    rows = "".join(
        f"<tr{' class=swept' if key in run.params else ''}><td>{escape(key)}</td><td>{escape(str(value))}</td></tr>"
        for key, value in config.items()
    )
    return (
        f'<details class="gw-config"><summary>config ({len(config)} values; swept ones highlighted)</summary>'
        f"<table>{rows}</table></details>"
    )


def _samples(run: Run) -> str:
    """The GAN's latest ``val/samples`` grid (``samples/val-samples-<step>.png``), inlined; nothing for other runs.

    Nothing either when that file is not a PNG image, is too large, or cannot be read.
    """
    steps = {p.stem.rsplit("-", 1)[-1]: p for p in run.dir.glob("samples/val-samples-*.png")}
    numbered = sorted((int(step), path) for step, path in steps.items() if step.isascii() and step.isdigit())
    if not numbered:
        return ""
    step, path = numbered[-1]
    try:
        with path.open("rb") as f:
            png = f.read(MAX_SAMPLES_BYTES + 1)
    except OSError:
        return ""
    if len(png) > MAX_SAMPLES_BYTES or not png.startswith(PNG_SIGNATURE):
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="gw-samples"><img alt="generated samples" src="data:image/png;base64,{data}">'
        f"<figcaption>val/samples at step {step}: the same latents every validation</figcaption></figure>"
    )


def _run_section(page: _Page, run: Run, anchor: str, *, sweep: Sweep | None, open_: bool) -> str:
    facts = [f"<b>{escape(run.id)}</b>"]
    shown = sweep.axes if sweep is not None else list(run.params)
    facts += [f"{escape(short(n))}={escape(format_value(run.params[n]))}" for n in shown if n in run.params]
    if sweep is not None and sweep.metric:
        facts.append(f"{escape(sweep.metric)} {_number(sweep.value(run))}")
    health = _health_text(run)
    facts.append(f'<span class="{"bad" if run.verdicts() else ""}">{escape(health)}</span>')
    if run.state:
        facts.append(escape(run.state))
    charts = fig.run_figures(run)
    body = "".join(page.chart(anchor, f"{anchor}-{name}", figure) for name, figure in charts.items())
    if not charts:
        body = '<p class="meta">Nothing logged yet.</p>'
    where = f'<p class="meta">{escape(str(run.dir))}</p>'
    where += "".join(
        f'<p class="advice {escape(verdict)}"><b>{escape(verdict)}</b>: {escape(said)}</p>'
        for verdict, said in run.advice().items()
    )
    where += "".join(f'<p class="advice nonfinite"><b>origin</b>: {escape(line)}</p>' for line in run.origins())
    body += _samples(run)
    return (
        f'<details class="gw-run" id="{anchor}" data-run="{escape(run.id)}"{" open" if open_ else ""}>'
        f"<summary>{' · '.join(facts)}</summary>{where}{body}{_config_table(run)}</details>"
    )


def _sweep_section(page: _Page, sweep: Sweep, index: int, anchors: dict[int, str]) -> str:
    goal = f" ({sweep.goal})" if sweep.metric else ""
    parts = [
        f'<section class="gw-sweep" id="sweep-{index}"><h2>Sweep {escape(sweep.name)}</h2>',
        f'<p class="meta">{len(sweep.runs)} runs in {escape(str(sweep.dir))}; metric '
        f"{escape(sweep.metric or 'none')}{goal}. Click a column to sort, a run to open it.</p>",
        _results_table(sweep, anchors),
    ]
    for name, figure in fig.sweep_figures(sweep).items():
        parts.append(page.chart(f"sweep-{index}", f"sweep-{index}-{name}", figure))
    parts.append("<h3>Runs, best first</h3>")
    parts += [_run_section(page, run, anchors[id(run)], sweep=sweep, open_=False) for run in sweep.ranked()]
    parts.append("</section>")
    return "".join(parts)


def _items(lines: list[str]) -> str:
    return "".join(f"<li>{escape(line)}</li>" for line in lines)


def render(found: Collection, plotly_js: str) -> str:
    """The report page for everything in ``found``.

    Args:
        found: The sweeps and runs to show.
        plotly_js: plotly.js itself, inlined so the page opens with no network.
    """
    page = _Page()
    anchors = {id(run): f"run-{i}" for i, run in enumerate(found.all_runs())}
    summary = [
        f"<li><b>Sweep {escape(sweep.name)}</b><ul>{_items(sweep_summary(sweep))}</ul></li>" for sweep in found.sweeps
    ]
    summary.append(_items(runs_summary(found.runs)))
    sections = [_sweep_section(page, sweep, i, anchors) for i, sweep in enumerate(found.sweeps)]
    if found.runs:
        single = len(found.runs) == 1 and not found.sweeps
        sections.append('<section class="gw-runs"><h2>Runs</h2>')
        sections += [_run_section(page, run, anchors[id(run)], sweep=None, open_=single) for run in found.runs]
        sections.append("</section>")
    count = len(found.all_runs())
    title = f"gradwatch report: {found.path.resolve().name}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">{count} run{"s" if count != 1 else ""} from {escape(str(found.path.resolve()))}, '
        f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}</p>"
        f'<section id="summary"><ul>{"".join(summary)}</ul></section>'
        f"{''.join(sections)}"
        f"{page.data()}"
        f"<script>{plotly_js}</script><script>{_SCRIPT}</script></body></html>"
    )


def plotly_js() -> str:
    """plotly.js, cartesian bundle, as vendored in ``assets/`` (see its README for the version and why)."""
    return (resources.files("gradwatch.report") / "assets" / PLOTLY_JS).read_text(encoding="utf-8")


def write_report(found: Collection, output: str | Path | None = None) -> Path:
    """Write the HTML report of the runs and sweeps found under a path (:func:`gradwatch.report.runs.find`).

    Args:
        found: What to show.
        output: The HTML file (default: ``report.html`` in the path searched).

    Returns:
        The file written.

    Raises:
        ReportError: ``output`` cannot be written.
    """
    from gradwatch.report.runs import ReportError

    target = Path(output) if output is not None else (found.path / "report.html")
    html = render(found, plotly_js())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{target}: cannot write the report: {exc.strerror}") from None
    return target
