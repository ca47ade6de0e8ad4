"""``gradwatch report`` opened in headless Chromium: offline, no console errors, every chart drawn and non-blank."""

from __future__ import annotations

import pytest
from lightning.pytorch.loggers import CSVLogger
from report_data import EXPECTED_SUMMARY, gradwatch, run_sweep, vanishing_sweep

from conftest import make_trainer
from gradwatch import CNN, ActivationMonitor, DigitsDataModule, GradientMonitor
from gradwatch.report.runs import find

__all__ = ["vanishing_sweep"]  # a fixture, used by name

RUN_CHARTS = {"flow", "grad-norm", "update-ratio", "loss", "metrics"}


def charts_by_name(result):
    return {chart.name: chart for chart in result.charts}


def test_a_sweep_report_draws_its_overview_then_each_run_when_opened(vanishing_sweep, report_browser, tmp_path):
    out = tmp_path / "sweep.html"
    gradwatch("report", str(vanishing_sweep), "-o", str(out), cwd=tmp_path, check=True)
    sweep = find(vanishing_sweep).sweeps[0]
    vanished = [run.id for run in sweep.runs if run.verdicts()]
    healthy = next(run.id for run in sweep.runs if not run.verdicts())
    anchors = {run.id: f"run-{i}" for i, run in enumerate(sweep.runs)}
    assert len(vanished) == 2

    result = report_browser.open(out, open_runs=[vanished[0], healthy])

    assert result.console_errors == []
    assert result.network == []
    assert EXPECTED_SUMMARY in result.summary
    assert "Best val/acc: 0.91" in result.summary
    charts = charts_by_name(result)
    for name in ("sweep-0-parallel", "sweep-0-grid"):
        assert charts[name].drawn, charts[name]
        assert charts[name].nonblank, charts[name]
    for run in (vanished[0], healthy):
        for name in RUN_CHARTS:
            chart = charts[f"{anchors[run]}-{name}"]
            assert chart.drawn, chart
            assert chart.nonblank, chart
    # The other ten runs wait until they are opened: a 64-run sweep opens in the time of its overview.
    drawn = [chart.name for chart in result.charts if chart.drawn]
    assert len(drawn) == 2 + 2 * len(RUN_CHARTS)
    assert f"{anchors[vanished[1]]}-flow" in charts
    assert not charts[f"{anchors[vanished[1]]}-flow"].drawn


def test_the_results_table_sorts_by_a_clicked_column(vanishing_sweep, report_browser, tmp_path):
    out = tmp_path / "sorted.html"
    gradwatch("report", str(vanishing_sweep), "-o", str(out), cwd=tmp_path, check=True)
    report = report_browser.page(out)
    try:
        report.wait_ready()
        table = report.page.locator("table.gw-results")
        column = table.locator("th").all_inner_texts().index("attenuation")

        def first_row():
            return table.locator("tbody tr").first.locator("td").nth(column).inner_text()

        assert first_row() != "-8.44"  # best val/acc first
        table.locator("th", has_text="attenuation").click()
        assert first_row() == "-8.44"  # ascending: the most attenuated first
        table.locator("th", has_text="attenuation").click()
        assert first_row() != "-8.44"
        assert report.console_errors == []
    finally:
        report.close()


@pytest.mark.slow
def test_a_sweep_report_rounds_its_labels_and_draws_no_axis_for_a_constant(tmp_path, report_browser):
    lr = 0.002153708731221119  # a value a random search draws
    parameters = {
        "depth": {"values": [4, 8, 16]},
        "lr": {"values": [lr, 0.01]},
        "activation": {"value": "sigmoid"},
        "residual": {"value": False},
    }
    sweep = run_sweep(tmp_path, name="rounded", parameters=parameters)
    out = tmp_path / "rounded.html"
    gradwatch("report", str(sweep), "-o", str(out), cwd=tmp_path, check=True)
    report = report_browser.page(out)
    try:
        report.wait_ready()
        text, table = report.text(), report.texts("table.gw-results th")
        axes = report.texts('.gw-chart[data-chart="sweep-0-parallel"] .xtick text')
        labels = report.texts('.gw-chart[data-chart="sweep-0-parallel"] .annotation-text')
        assert report.console_errors == []
    finally:
        report.close()
    # The constants (one value in every run) are neither parallel axes nor table columns.
    assert axes == ["depth", "lr", "val/acc", "attenuation"]
    assert [name for name in table if name in {"depth", "lr", "activation", "residual"}] == ["depth", "lr"]
    # Every number to 4 significant digits, and an axis of a few values ticked at each of them.
    assert str(lr) not in text
    assert "0.002154" in labels
    assert {"4", "8", "16"} <= set(labels)
    assert "0.002154" in text  # in the results table and the runs' headers


def test_a_users_own_trainer_with_the_monitors_gets_every_run_chart(tmp_path, report_browser):
    monitors = [GradientMonitor(log_every_n_steps=1), ActivationMonitor(every_n_steps=2)]
    logger = CSVLogger(tmp_path / "logs")  # Lightning's own layout: logs/lightning_logs/version_0/
    trainer = make_trainer(tmp_path, max_steps=8, val_check_interval=4, callbacks=monitors, logger=logger)
    trainer.fit(CNN(depth=2, width=8), DigitsDataModule(batch_size=32))
    out = tmp_path / "run.html"
    gradwatch("report", str(tmp_path / "logs"), "-o", str(out), cwd=tmp_path, check=True)

    result = report_browser.open(out)  # a report of one run opens it

    assert result.console_errors == []
    assert result.network == []
    charts = charts_by_name(result)
    assert set(charts) == {f"run-0-{name}" for name in RUN_CHARTS | {"activations"}}
    for chart in result.charts:
        assert chart.drawn, chart
        assert chart.nonblank, chart
    assert "Run lightning_logs/version_0: gradients healthy at its last measurement." in result.summary
    assert "backbone.stem.conv" in result.text  # the heatmap's layer axis, input first


@pytest.mark.slow
def test_a_gradwatch_fit_run_reports_its_config_the_monitors_advice_and_unbroken_lines(tmp_path, report_browser):
    gradwatch(
        "fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "12", "--model.activation", "sigmoid",
        "--model.norm", "none", "--model.optimizer", "torch.optim.SGD", "--trainer.max_steps", "6",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", "runs", cwd=tmp_path, check=True,
    )  # fmt: skip
    done = gradwatch("report", "runs", cwd=tmp_path, check=True)

    (run,) = find(tmp_path / "runs").runs
    out = tmp_path / "runs" / "report.html"
    assert f"{out}" in done.stdout
    assert run.config["model.depth"] == 12
    assert run.config["model"] == "gradwatch.CNN"
    assert "<td>model.depth</td><td>12</td>" in out.read_text()
    assert run.layers[0] == "backbone.stem.conv"
    assert run.layers[-1] == "head"
    # The console's cause and remedy, in the summary and beside the run's charts.
    advice = (
        "likely cause: sigmoid × 12 blocks without residual or norm; try activation=relu / residual=true / norm=batch"
    )
    report = report_browser.page(out)
    try:
        report.wait_ready()
        summary, text = report.text("#summary"), report.text()
        ticks = report.texts('.gw-chart[data-chart="run-0-update-ratio"] .ytick text')
        lines = report.texts('.gw-chart[data-chart="run-0-update-ratio"] .scatterlayer path.js-line', "d")
        assert report.console_errors == []
    finally:
        report.close()
    assert f"Run {run.id}: vanishing in " in summary
    assert f"at its last measurement. L{advice[1:]}." in summary
    assert f"vanishing: {advice}" in text
    # Under plain SGD the first layers' weights do not move at all: their zero updates are drawn on the axis's 0,
    # and every layer's line is one unbroken stroke (a gap starts a new "M" in its SVG path).
    assert (run.metrics.series("grad/update_ratio/backbone.stem.conv")[1] == 0).any()
    assert ticks[0] == "0"
    assert len(lines) == len(run.layers)
    assert [d.count("M") for d in lines] == [1] * len(lines)
