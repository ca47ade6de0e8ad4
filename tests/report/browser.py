"""Open a ``gradwatch report`` HTML file in the system's Chromium (Playwright, sync API) and read what it shows.

The page contract: charts are ``div.gw-chart[data-chart]`` drawn by Plotly; the page sets
``<html data-ready="true">`` once the charts visible at load are drawn (``data-error="<message>"`` if drawing
threw); ``details.gw-run[data-run]`` sections draw on opening, then get ``data-ready="true"``; the summary is
``section#summary``; nothing may be fetched but ``file:`` / ``data:`` URLs (others are aborted and recorded).

    with ReportBrowser() as browser:
        result = browser.open("report.html", open_runs=True)
        assert not result.console_errors and not result.network
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
# Elements Plotly draws per trace: SVG traces, heatmap images, parallel coordinates, tables, WebGL canvases.
TRACE_SELECTOR = ".trace, .hm, .parcoords, .table, table, .gl-canvas-focus"
# Runs in the page before its scripts: note when <html> gets data-ready / data-error (performance.now(), ms).
WATCH_READY = """
new MutationObserver(() => {
  const data = document.documentElement && document.documentElement.dataset;
  if (data && data.ready === "true" && window.__gwReadyMs === undefined) window.__gwReadyMs = performance.now();
  if (data && data.error !== undefined && window.__gwError === undefined) window.__gwError = data.error;
}).observe(document, {attributes: true, subtree: true, attributeFilter: ["data-ready", "data-error"]});
"""
CHART_FACTS = """
(charts, selector) => charts.map((el) => ({
  name: el.dataset.chart || "",
  plotted: !!el.querySelector(".main-svg"),
  traces: el.querySelectorAll(selector).length,
  // checkVisibility: false inside a closed <details> (content-visibility: hidden) or under display: none.
  visible: el.checkVisibility({visibilityProperty: true}) && el.offsetWidth > 0 && el.offsetHeight > 0,
}))
"""


class ReportError(AssertionError):
    """The page set ``data-error``, or did not get ready in time."""


def find_chromium() -> str | None:
    """``$GRADWATCH_CHROMIUM``, else the first of chromium / chromium-browser / google-chrome on ``PATH``."""
    if os.environ.get("GRADWATCH_CHROMIUM"):
        return os.environ["GRADWATCH_CHROMIUM"]
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@dataclass
class Chart:
    """One ``gw-chart``: ``drawn`` = Plotly drew it with a trace; ``nonblank`` = its pixels show something."""

    name: str
    drawn: bool
    visible: bool
    nonblank: bool
    colours: int  # distinct colours in its screenshot (0 when not visible)
    ink: float  # fraction of pixels not the background (most common) colour


@dataclass
class PageResult:
    """What one report showed, after load and after opening the asked-for run sections."""

    path: Path
    ready_seconds: float  # navigation start → <html data-ready="true">, measured in the page
    console_errors: list[str]  # console errors, uncaught exceptions, failed requests
    network: list[str]  # URLs requested that are not file: / data: (all aborted)
    charts: list[Chart]
    summary: str  # inner text of #summary ("" when absent)
    text: str  # inner text of the body
    runs_opened: dict[str, float] = field(default_factory=dict)  # run id → seconds from click to data-ready

    def chart(self, name: str) -> Chart:
        """The first chart named ``name``."""
        return next(c for c in self.charts if c.name == name)


def pixels(png: bytes) -> tuple[int, float]:
    """Distinct colours of a screenshot and the fraction of its pixels that differ from the most common one."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = image.getcolors(maxcolors=image.width * image.height) or []
    background = max(count for count, _ in counts) if counts else 0
    total = image.width * image.height
    return len(counts), (total - background) / total if total else 0.0


class ReportPage:
    """One open report: the Playwright ``page`` plus the errors and requests seen so far."""

    def __init__(self, context: Any, path: str | Path, timeout: float) -> None:
        self.path, self.timeout, self.context = Path(path).resolve(), timeout, context
        self.console_errors: list[str] = []
        self.network: list[str] = []
        self.runs_opened: dict[str, float] = {}
        context.route("**/*", self._route)
        context.add_init_script(WATCH_READY)
        self.page = context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.console_errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("websocket", lambda ws: self.network.append(ws.url))
        self.page.goto(self.path.as_uri(), wait_until="load", timeout=timeout * 1000)

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            self.network.append(route.request.url)
            route.abort()

    def _fail(self, what: str) -> ReportError:
        errors = "\n".join(self.console_errors) or "none"
        return ReportError(f"{self.path.name}: {what}\nconsole errors:\n{errors}")

    def wait_ready(self) -> float:
        """Seconds from navigation start to ``data-ready``; :class:`ReportError` on ``data-error`` or timeout."""
        done = "() => window.__gwReadyMs !== undefined || window.__gwError !== undefined"
        try:
            self.page.wait_for_function(done, timeout=self.timeout * 1000, polling=20)
        except Exception as exc:  # Playwright's TimeoutError
            raise self._fail(f"not ready after {self.timeout} s ({type(exc).__name__})") from None
        error = self.page.evaluate("window.__gwError")
        if error is not None:
            raise self._fail(f"data-error: {error}")
        return self.page.evaluate("window.__gwReadyMs") / 1000.0

    def run_ids(self) -> list[str]:
        """The ``data-run`` of every run section, in page order."""
        return self.page.eval_on_selector_all("details.gw-run", "els => els.map(e => e.dataset.run)")

    def open_run(self, run: str) -> float:
        """Open run ``run``'s section (click its summary); seconds until it is ``data-ready``."""
        section = f'details.gw-run[data-run="{run}"]'
        start = time.perf_counter()
        self.page.locator(f"{section} > summary").click()
        try:
            self.page.locator(f'{section}[data-ready="true"]').wait_for(timeout=self.timeout * 1000)
        except Exception:
            raise self._fail(f"run section {run!r} not ready after {self.timeout} s") from None
        self.runs_opened[run] = time.perf_counter() - start
        return self.runs_opened[run]

    def charts(self, *, min_colours: int = 4, min_ink: float = 0.005) -> list[Chart]:
        """Facts about every ``gw-chart``; visible ones are screenshotted to judge ``nonblank``."""
        locator = self.page.locator(".gw-chart")
        facts = locator.evaluate_all(CHART_FACTS, TRACE_SELECTOR)
        charts = []
        for i, f in enumerate(facts):
            colours, ink = pixels(locator.nth(i).screenshot(timeout=self.timeout * 1000)) if f["visible"] else (0, 0)
            drawn = f["plotted"] and f["traces"] > 0
            nonblank = colours >= min_colours and ink >= min_ink
            charts.append(Chart(f["name"], drawn, f["visible"], nonblank, colours, ink))
        return charts

    def text(self, selector: str = "body") -> str:
        """Inner text of the first element matching ``selector`` ("" when there is none)."""
        element = self.page.query_selector(selector)
        return element.inner_text() if element else ""

    def texts(self, selector: str, attribute: str | None = None) -> list[str]:
        """``textContent`` (or ``attribute``) of every element matching ``selector``; SVG text included."""
        script = "(els, name) => els.map(e => name ? e.getAttribute(name) : e.textContent)"
        return self.page.locator(selector).evaluate_all(script, attribute)

    def close(self) -> None:
        """Close the page and its browser context."""
        self.context.close()


class ReportBrowser:
    """One headless Chromium (started on entering, or by :meth:`start`) that opens reports in fresh contexts."""

    def __init__(self, executable: str | None = None, *, viewport: tuple[int, int] = (1280, 900)) -> None:
        self.executable = executable or find_chromium()
        self.viewport = {"width": viewport[0], "height": viewport[1]}
        self._playwright: Any = None
        self.browser: Any = None

    def start(self) -> ReportBrowser:
        """Launch Chromium; ``RuntimeError`` when there is none."""
        if self.executable is None:
            raise RuntimeError("chromium not found: apt-get install chromium, or set GRADWATCH_CHROMIUM")
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=self.executable, args=ARGS)
        return self

    def close(self) -> None:
        """Close Chromium and Playwright."""
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()
        self.browser = self._playwright = None

    def __enter__(self) -> ReportBrowser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def page(self, path: str | Path, *, timeout: float = 30.0) -> ReportPage:
        """Load ``path`` in a fresh context; the caller waits, clicks, and closes the :class:`ReportPage`."""
        return ReportPage(self.browser.new_context(viewport=self.viewport), path, timeout)

    def open(self, path: str | Path, *, open_runs: bool | list[str] = False, timeout: float = 30.0) -> PageResult:
        """Load ``path``, wait for ``data-ready``, open run sections (all with ``True``), and read the page."""
        report = self.page(path, timeout=timeout)
        try:
            ready = report.wait_ready()
            for run in report.run_ids() if open_runs is True else open_runs or []:
                report.open_run(run)
            charts, summary, text = report.charts(), report.text("#summary"), report.text()
            errors, network, opened = report.console_errors, report.network, report.runs_opened
            return PageResult(report.path, ready, errors, network, charts, summary, text, opened)
        finally:
            report.close()


def open_report(path: str | Path, *, open_runs: bool | list[str] = False, timeout: float = 30.0) -> PageResult:
    """:meth:`ReportBrowser.open` in a browser of its own (started and closed here)."""
    with ReportBrowser() as browser:
        return browser.open(path, open_runs=open_runs, timeout=timeout)
