"""``gradwatch report PATH [-o report.html]``: the offline HTML report of runs and local sweeps."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gradwatch report",
        description="Write one self-contained HTML page of gradient health (it opens with no network): per run, "
        "the gradient-flow heatmap, per-layer norms, update ratios, activations, losses and config; per sweep, a "
        "plain-language summary, the sortable results, parallel coordinates and a grid of the runs' heatmaps.",
    )
    parser.add_argument(
        "path",
        type=Path,
        help="a run folder (metrics.csv), a sweep folder (gradwatch sweep run --local), or a folder of either",
    )
    parser.add_argument("-o", "--output", type=Path, help="the HTML file (default: PATH/report.html)")
    return parser


def main(argv: list[str]) -> None:
    """Run ``gradwatch report`` with ``argv``; a path with nothing to report exits 2 with one line.

    Each run left out (its ``metrics.csv`` cannot be read) and each link that leads nowhere is named on stderr in a
    line of its own, and the rest is reported.
    """
    from gradwatch.report.page import write_report
    from gradwatch.report.runs import ReportError, Skipped, find

    def say(skipped: list[Skipped]) -> None:
        for item in skipped:
            print(f"gradwatch report: skipped {item}", file=sys.stderr)

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        found = find(args.path)
        say(found.skipped)
        written = write_report(found, args.output)
    except ReportError as exc:
        say(exc.skipped)
        print(f"gradwatch report: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    size = written.stat().st_size / 2**20
    print(f"gradwatch report: {written.resolve()} ({size:.1f} MB, {time.perf_counter() - start:.1f} s)")
