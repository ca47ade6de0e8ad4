"""``gradwatch report`` over folders where one run is damaged: the others are reported as if nothing happened.

A run that cannot be read is left out with one line on stderr naming it and why; a run that can be read in part is
reported as far as it can be, with nothing on stderr. Every damage is real bytes on disk, and the report is the
real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from report_data import gradwatch

from gradwatch.report.runs import find

HEADER = "epoch,grad/norm/head,grad/norm/stem,health/attenuation,health/vanishing,step,train/loss,val/acc"
STEPS = 12
#: Lightning's layout: a training row per step (empty val/acc), then a validation row at the last step.
ROWS = [f"0,{0.5 + 0.01 * s},{0.1 / (1 + s)},-0.7,0,{s},{2.3 - 0.1 * s}," for s in range(STEPS)]
ROWS.append(f"0,,,,,{STEPS - 1},,0.75")
INTACT = HEADER + "\n" + "".join(row + "\n" for row in ROWS)
#: The charts the intact run draws.
RUN_CHARTS = {"flow", "grad-norm", "loss", "metrics"}
#: Bytes that are no CSV: what a disk, a copy or a crash may leave in a file.
GARBAGE = random.Random(16).randbytes(4096)


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def intact_run(folder: Path) -> Path:
    write(folder / "metrics.csv", INTACT)
    write(folder / "hparams.yaml", "gradwatch/layers:\n- stem\n- head\n")
    return folder


def report(root: Path, *, prefix: tuple[str, ...] = ()) -> tuple[int, list[str], str]:
    """``gradwatch report runs`` in ``root``: its exit code, its stderr lines, and the page it wrote ("" if none)."""
    done = gradwatch("report", "runs", "-o", "report.html", cwd=root, prefix=prefix)
    page = root / "report.html"
    return done.returncode, done.stderr.splitlines(), page.read_text() if page.exists() else ""


def run_charts(html: str, run: str) -> set[str]:
    """The charts in run ``run``'s section of the page (empty when the page has no such run)."""
    anchor = re.search(rf'<details class="gw-run" id="(run-\d+)" data-run="{re.escape(run)}"', html)
    if anchor is None:
        return set()
    return set(re.findall(rf'data-chart="{anchor[1]}-([a-z-]+)"', html))


def symlink(target: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


# --- runs that cannot be read: left out, one line each ----------------------------------------------------------------

UNREADABLE: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "binary garbage": (
        lambda runs: write(runs / "abc123" / "metrics.csv", GARBAGE),
        ["runs/abc123: metrics.csv is not a CSV file (binary data)"],
    ),
    "the zeros of a lost write": (
        lambda runs: write(runs / "abc123" / "metrics.csv", bytes(4096)),
        ["runs/abc123: metrics.csv is not a CSV file (binary data)"],
    ),
    "a folder named metrics.csv": (
        lambda runs: (runs / "abc123" / "metrics.csv").mkdir(parents=True),
        ["runs/abc123: metrics.csv is a folder, not a file"],
    ),
    "a metrics.csv that links to itself": (
        lambda runs: symlink("metrics.csv", runs / "abc123" / "metrics.csv"),
        ["runs/abc123: metrics.csv is a symlink loop"],
    ),
    "a symlink loop beside the run": (
        lambda runs: symlink("loop", runs / "loop"),
        ["runs/loop: it is a symlink loop"],
    ),
    "two links that lead to each other": (
        lambda runs: (symlink("b", runs / "a"), symlink("a", runs / "b")),
        ["runs/a: it is a symlink loop", "runs/b: it is a symlink loop"],
    ),
    "a link to a run that is gone": (
        lambda runs: symlink("/nonexistent/gradwatch/run", runs / "gone"),
        ["runs/gone: it is a broken symlink"],
    ),
}


@pytest.mark.parametrize(("damage", "skipped"), UNREADABLE.values(), ids=UNREADABLE.keys())
def test_what_cannot_be_read_is_named_in_one_line_and_the_others_are_reported(tmp_path, damage, skipped):
    intact_run(tmp_path / "runs" / "good")
    damage(tmp_path / "runs")

    code, stderr, html = report(tmp_path)

    assert code == 0, stderr
    assert stderr == [f"gradwatch report: skipped {line}" for line in skipped]
    assert run_charts(html, "good") == RUN_CHARTS
    assert re.findall(r'data-run="([^"]*)"', html) == ["good"]
    assert "1 run from" in html


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which a ``chmod 000`` file cannot be read: none for a user; for root, ``setpriv``
    without the capabilities that let root read any file."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("root reads every file, and there is no setpriv to drop that power")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_a_metrics_csv_without_read_permission_is_named_and_the_others_are_reported(tmp_path):
    intact_run(tmp_path / "runs" / "good")
    bad = intact_run(tmp_path / "runs" / "locked")
    (bad / "metrics.csv").chmod(0)
    try:
        code, stderr, html = report(tmp_path, prefix=unprivileged())
    finally:
        (bad / "metrics.csv").chmod(0o644)  # so that pytest can clean up

    assert code == 0, stderr
    assert stderr == ["gradwatch report: skipped runs/locked: metrics.csv cannot be read (Permission denied)"]
    assert run_charts(html, "good") == RUN_CHARTS
    assert "locked" not in re.findall(r'data-run="([^"]*)"', html)


def test_when_every_run_is_left_out_each_is_named_then_nothing_to_report_exits_2(tmp_path):
    write(tmp_path / "runs" / "a" / "metrics.csv", GARBAGE)
    (tmp_path / "runs" / "b" / "metrics.csv").mkdir(parents=True)

    code, stderr, html = report(tmp_path)

    assert code == 2
    assert stderr == [
        "gradwatch report: skipped runs/a: metrics.csv is not a CSV file (binary data)",
        "gradwatch report: skipped runs/b: metrics.csv is a folder, not a file",
        "gradwatch report: runs: nothing to report: every run under it was left out (above)",
    ]
    assert html == ""


# --- runs that can be read in part: reported as far as they go, nothing on stderr -------------------------------------

SAMPLE_PNG = "samples/val-samples-7.png"


def check_numbers_beside_text(run, html):
    # A user logged a string: those cells are NaN, the numbers beside them are read (the fast parser gives way).
    assert run.metrics.values("val/acc") == [0.5]
    assert run.metrics.series("train/loss")[0].tolist() == [0, 2]
    assert run.metrics.values("grad/norm/head") == [1.0, 2.0, 3.0]


def check_inf_count(run, html):
    assert run.verdicts() == ["vanishing"]
    assert "vanishing inf" in html  # the run's header: what was logged, not int(inf)
    assert "Run bad: vanishing in inf layers at its last measurement." in html


def check_bom(run, html):
    assert sorted(run.metrics.columns) == ["grad/norm/head", "train/loss"]  # no "\ufeffepoch" series
    assert run.metrics.step.tolist() == [3, 4]


def check_half_written(run, html):
    assert run.metrics.values("grad/norm/head") == [0.5, 0.4]


def check_empty(run, html):
    assert run.metrics.columns == {}
    assert "Nothing logged yet." in html


def check_without_config(run, html):
    assert run.config == {}
    assert run.layers == ["head", "stem"]  # no recorded order: the columns' natural order
    assert run_charts(html, "bad") == RUN_CHARTS
    assert "No saved config (config.yaml or hparams.yaml)." in html


def check_config(expected: dict) -> Callable:
    def check(run, html):
        assert run.config == expected
        assert run_charts(html, "bad") == RUN_CHARTS

    return check


def check_verdicts(run, html):
    assert run.advice() == {"vanishing": "likely cause: depth; try residual=true"}


def check_no_samples(run, html):
    assert '<figure class="gw-samples">' not in html


PARTLY_READABLE: dict[str, tuple[Callable[[Path], object], Callable]] = {
    "text in number cells": (
        lambda bad: write(
            bad / "metrics.csv",
            "grad/norm/head,step,train/loss,val/acc\n1.0,0,2.3,n/a\n2.0,1,ok,0.5\n3.0,2,2.1,\n",
        ),
        check_numbers_beside_text,
    ),
    "an inf verdict count": (
        lambda bad: write(bad / "metrics.csv", INTACT.replace(",0,11,", ",inf,11,")),
        check_inf_count,
    ),
    "a UTF-8 byte order mark": (
        lambda bad: write(
            bad / "metrics.csv", b"\xef\xbb\xbfepoch,grad/norm/head,step,train/loss\r\n0,1,3,2\r\n0,1,4,2\r\n"
        ),
        check_bom,
    ),
    "a half-written last line": (
        lambda bad: write(bad / "metrics.csv", "grad/norm/head,step\n0.5,0\n0.4,1\n0.3"),
        check_half_written,
    ),
    "an empty metrics.csv": (lambda bad: write(bad / "metrics.csv", b""), check_empty),
    "a binary hparams.yaml and a config.yaml that is no YAML": (
        lambda bad: (
            intact_run(bad),
            write(bad / "hparams.yaml", GARBAGE),
            write(bad / "config.yaml", "model: {class_path: x, init_args: [1, 2]\n\t- ]"),
        ),
        check_without_config,
    ),
    "a config.yaml whose init_args are a list": (
        lambda bad: (intact_run(bad), write(bad / "config.yaml", "model:\n  class_path: x\n  init_args: [1, 2]\n")),
        check_config({"model": "x"}),
    ),
    "a config.yaml inside itself": (
        lambda bad: (
            intact_run(bad),
            write(bad / "config.yaml", "model: &a\n  class_path: x\n  init_args: *a\n"),
            write(bad / "hparams.yaml", "depth: 4\n"),
        ),
        check_config({"depth": 4}),  # the logger's hyperparameters instead
    ),
    "verdict lines that are no verdicts": (
        lambda bad: (
            write(bad / "metrics.csv", INTACT.replace(",0,11,", ",2,11,")),
            write(
                bad / "verdicts.jsonl",
                b'{"verdict": ["vanishing"], "advice": "x"}\n[1, 2]\n\xff\xfe\x00garbage\n'
                + b'{"verdict": "vanishing", "advice": null}\n'
                + b'{"verdict": "vanishing", "advice": "likely cause: depth; try residual=true"}\n'
                + b"[" * 100_000,
            ),
        ),
        check_verdicts,
    ),
    "a samples grid that is no PNG": (
        lambda bad: (intact_run(bad), write(bad / SAMPLE_PNG, GARBAGE), (bad / "samples/val-samples-8.png").mkdir()),
        check_no_samples,
    ),
}


@pytest.mark.parametrize(("damage", "check"), PARTLY_READABLE.values(), ids=PARTLY_READABLE.keys())
def test_a_run_damaged_in_part_is_reported_as_far_as_it_can_be_read(tmp_path, damage, check):
    intact_run(tmp_path / "runs" / "good")
    damage(tmp_path / "runs" / "bad")

    code, stderr, html = report(tmp_path)

    assert code == 0, stderr
    assert stderr == []
    assert run_charts(html, "good") == RUN_CHARTS
    assert re.findall(r'data-run="([^"]*)"', html) == ["bad", "good"]
    (bad,) = [run for run in find(tmp_path / "runs").runs if run.id == "bad"]
    check(bad, html)


# --- a sweep, and everything at once in the browser -------------------------------------------------------------------


def write_sweep(folder: Path) -> Path:
    """A local sweep's folder by hand: four trials of ``depth``; one unreadable, one whose metric went to inf."""
    sweep = {"name": "faults", "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": {"depth": {}}}
    sweep["parameters"]["depth"] = {"values": [2, 4, 8, 16]}
    write(folder / "sweep.yaml", json.dumps(sweep))
    for depth, (trial, metrics) in zip(
        (2, 4, 8, 16),
        [("t2", INTACT), ("t4", INTACT.replace(",0.75", ",inf")), ("t8", GARBAGE), ("t16", INTACT)],
        strict=True,
    ):
        write(folder / "runs" / trial / "metrics.csv", metrics)
        write(folder / "trials" / f"config-{trial}.json", json.dumps({"depth": depth}))
    return folder


def test_a_sweep_leaves_out_its_unreadable_trial_and_ranks_an_inf_metric_off_the_axes(tmp_path):
    write_sweep(tmp_path / "runs" / "sweep")

    code, stderr, html = report(tmp_path)

    assert code == 0, stderr
    assert stderr == ["gradwatch report: skipped runs/sweep/runs/t8: metrics.csv is not a CSV file (binary data)"]
    assert sorted(re.findall(r'data-run="([^"]*)"', html)) == ["t16", "t2", "t4"]
    assert 'data-chart="sweep-0-parallel"' in html  # drawn from the two trials with a finite val/acc
    (sweep,) = find(tmp_path / "runs").sweeps
    assert sweep.ranked()[0].id == "t4"  # inf is the largest val/acc, as the sweep table ranks it


def test_every_damage_at_once_opens_with_no_error_and_the_intact_runs_drawn(tmp_path, report_browser):
    runs = tmp_path / "runs"
    intact_run(runs / "good")
    folder = {name: name.replace(" ", "-") for name in [*UNREADABLE, *PARTLY_READABLE]}
    for name, (damage, _) in [*UNREADABLE.items(), *PARTLY_READABLE.items()]:
        damage(runs / folder[name])
    write_sweep(runs / "sweep")

    code, stderr, html = report(tmp_path)

    assert code == 0, stderr
    expected = [
        "gradwatch report: skipped " + line.replace("runs/", f"runs/{folder[name]}/", 1)
        for name, (_, lines) in UNREADABLE.items()
        for line in lines
    ]
    expected.append("gradwatch report: skipped runs/sweep/runs/t8: metrics.csv is not a CSV file (binary data)")
    assert sorted(stderr) == sorted(expected)
    assert len(stderr) == len(expected)

    result = report_browser.open(tmp_path / "report.html", open_runs=True)  # every run's charts drawn

    assert result.console_errors == []
    assert result.network == []
    charts = {chart.name: chart for chart in result.charts}
    for anchor in {re.search(rf'id="(run-\d+)" data-run="{run}"', html)[1] for run in ("good", "t2")}:
        for name in RUN_CHARTS:
            assert charts[f"{anchor}-{name}"].drawn, charts[f"{anchor}-{name}"]
            assert charts[f"{anchor}-{name}"].nonblank, charts[f"{anchor}-{name}"]
    assert charts["sweep-0-parallel"].drawn
    assert all(chart.drawn for chart in result.charts), [chart for chart in result.charts if not chart.drawn]
