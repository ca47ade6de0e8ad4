"""The live status line of a local sweep on a terminal: done / running / queued, the best so far, elapsed and ETA."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.live import Live

    from gradwatch.sweep.local import LocalSweep, Progress


def clock(seconds: float) -> str:
    """``1:05`` for 65 s, ``1:01:05`` past an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(progress: Progress, metric: str | None) -> str:
    """The status line's text: ``3/8 done · 2 running · 3 queued · best val/acc 0.9852 (#4) · 1:12, ETA 2:05``."""
    p = progress
    parts = [f"{p.ended}/{p.total} done", f"{p.running} running"]
    if p.elsewhere:
        parts.append(f"{p.elsewhere} on other machines")
    parts.append(f"{p.queued} queued")
    if p.best is not None and metric is not None:
        parts.append(f"best {metric} {p.best[0]:.4g} (#{p.best[1]})")
    parts.append(clock(p.elapsed) + (f", ETA {clock(p.eta)}" if p.eta is not None else ""))
    return " · ".join(parts)


class StatusLine:
    """One line redrawn in place while a local sweep runs, in place of a line per routine event.

    Routine events (a trial started, finished, pruned) become the line's last part; every other line (a failed
    trial, a warning) is printed above it, as it comes. Use it only when the output is a terminal: a log or a pipe
    gets every line instead.

    Args:
        metric: The sweep's metric name, for "best ..." (``None`` without a metric).
        prefix: Put before every line.
        interval: Seconds between two redraws of the counts (each reads the study).
    """

    def __init__(self, metric: str | None, prefix: str = "gradwatch sweep: ", interval: float = 1.0) -> None:
        self.metric = metric
        self.prefix = prefix
        self.interval = interval
        self._sweep: LocalSweep | None = None
        self._live: Live | None = None
        self._last_event = ""
        self._drawn = 0.0

    @contextmanager
    def showing(self, sweep: LocalSweep) -> Iterator[None]:
        """Show the line while the block runs ``sweep``; it is gone when the block ends."""
        from rich.live import Live

        self._sweep = sweep
        with Live(auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False) as live:
            self._live = live
            try:
                self.draw()
                yield
            finally:
                self._live = None

    def echo(self, line: str) -> None:
        """Print ``line`` above the status line (or plainly, before and after it is shown)."""
        if self._live is None:
            print(self.prefix + line, flush=True)
        else:
            self._live.console.print(self.prefix + line, markup=False, highlight=False, soft_wrap=True)

    def event(self, line: str) -> None:
        """Show a routine event as the line's last part."""
        if self._live is None:
            self.echo(line)
            return
        self._last_event = line
        self.draw()

    def tick(self) -> None:
        """Redraw the counts when ``interval`` has passed since the last time."""
        if time.monotonic() - self._drawn >= self.interval:
            self.draw()

    def draw(self) -> None:
        """Redraw the line now."""
        from rich.text import Text

        if self._live is None or self._sweep is None:
            return
        self._drawn = time.monotonic()
        text = self.prefix + describe(self._sweep.progress(), self.metric)
        if self._last_event:
            text += f" · {self._last_event}"
        self._live.update(Text(text, no_wrap=True, overflow="ellipsis"), refresh=True)
