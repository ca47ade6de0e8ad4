"""The run folder's vocabulary: the one metrics.csv reader, the health summary, the ranking rule, sweep files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gradwatch.rundir import (
    VERDICTS_FILE,
    Metrics,
    SweepInfo,
    append_verdict,
    describe_health,
    health_summary,
    latest_checkpoint,
    ranked,
    read_layers,
    read_metrics,
    read_results,
    read_verdicts,
    trial_files,
    write_atomic,
)


def write_csv(path, header, *rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))


def test_metrics_are_read_as_logged_and_a_half_written_row_is_left_out(tmp_path):
    path = tmp_path / "metrics.csv"
    write_csv(path, ["epoch", "grad/norm/head", "step", "val/acc"], [0, 0.5, 0, ""], [0, "", 0, 0.25], [0, 0.4, 1, ""])
    path.write_text(path.read_text() + "0,0.3,2")  # the writer is mid-row
    metrics = read_metrics(path)
    assert metrics.values("grad/norm/head") == [0.5, 0.4]
    assert metrics.series("val/acc")[0].tolist() == [0]
    assert metrics.last("val/acc") == 0.25
    assert metrics.keys("grad/norm/") == ["head"]
    assert read_metrics(tmp_path / "missing.csv").values("val/acc") == []


def test_a_gans_verdict_counts_are_read_as_logged_not_summed():
    # GradientMonitor logs `health/<verdict>` as the count over every network, at each network's own step; the
    # attenuation per network. The last count is the count; the summary takes the worst attenuation.
    metrics = Metrics(
        np.array([0.0, 0.0, 1.0, 1.0]),
        {
            "health/vanishing": np.array([0.0, 3.0, 3.0, 3.0]),
            "health/exploding": np.array([0.0, 0.0, 0.0, 0.0]),
            "health/nonfinite": np.array([0.0, 0.0, 0.0, 0.0]),
            "health/attenuation/discriminator": np.array([-1.0, np.nan, -1.5, np.nan]),
            "health/attenuation/generator": np.array([np.nan, -6.0, np.nan, -5.0]),
        },
    )
    summary = health_summary(metrics)
    assert summary == {"vanishing": 3.0, "exploding": 0.0, "nonfinite": 0.0, "attenuation": -1.5}
    assert describe_health(summary) == "vanishing 3"
    assert describe_health({}) == "not measured"


def test_ranking_puts_a_finished_run_before_a_pruned_one_with_a_better_last_value():
    runs = [
        {"id": "pruned", "value": 0.95, "state": "pruned"},
        {"id": "failed", "value": None, "state": "failed"},
        {"id": "finished", "value": 0.7, "state": "finished"},
        {"id": "better", "value": 0.8, "state": "finished"},
        {"id": "outside", "value": math.nan, "state": None},  # no sweep recorded a state; NaN is no value
    ]
    order = ranked(runs, value=lambda r: r["value"], state=lambda r: r["state"], goal="maximize")
    assert [r["id"] for r in order] == ["better", "finished", "outside", "pruned", "failed"]
    order = ranked(runs, value=lambda r: r["value"], state=lambda r: r["state"], goal="minimize")
    assert [r["id"] for r in order][:2] == ["finished", "better"]


def test_sweep_info_reads_any_copy_of_a_sweep_file():
    config = {
        "name": "depth",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"model.depth": {"values": [2, 8]}, "trainer.max_epochs": {"value": 3}},
    }
    info = SweepInfo.from_config(config, name="folder")
    assert (info.name, info.metric, info.goal) == ("depth", "val/acc", "maximize")
    assert info.parameters == ["model.depth", "trainer.max_epochs"]
    assert info.axes == ["model.depth"]  # a constant is no axis
    assert SweepInfo.from_config({}, name="folder") == SweepInfo("folder", [], frozenset(), None, "minimize")


def test_layers_come_from_the_hyperparameter_else_natural_order(tmp_path):
    write_csv(tmp_path / "metrics.csv", ["grad/norm/blocks.10", "grad/norm/blocks.2", "step"], [1, 1, 0])
    assert read_layers(tmp_path) == ["blocks.2", "blocks.10"]
    (tmp_path / "hparams.yaml").write_text("gradwatch/layers:\n- stem\n- blocks.2\n- blocks.10\n")
    assert read_layers(tmp_path) == ["stem", "blocks.2", "blocks.10"]


def test_verdict_lines_are_read_back_oldest_first_and_a_half_written_one_is_left_out(tmp_path):
    assert read_verdicts(tmp_path) == []
    first = {"step": 4, "verdict": "vanishing", "line": "step 4: ...", "advice": "likely cause: x; try y"}
    append_verdict(tmp_path / "run", first)
    append_verdict(tmp_path / "run", {**first, "step": 9})
    with (tmp_path / "run" / VERDICTS_FILE).open("a") as f:
        f.write('{"step": 12, "verdict": "expl')  # the monitor is mid-line
    assert [entry["step"] for entry in read_verdicts(tmp_path / "run")] == [4, 9]


def test_results_are_read_by_run_id_and_a_sweep_still_running_has_none(tmp_path):
    assert read_results(tmp_path) == {}
    (tmp_path / "results.json").write_text(json.dumps([{"run_dir": "/x/runs/abc", "state": "pruned"}]))
    assert read_results(tmp_path) == {"abc": {"run_dir": "/x/runs/abc", "state": "pruned"}}
    config, values = trial_files(tmp_path, "abc")
    assert (config.name, values.name, config.parent.name) == ("config-abc.yaml", "config-abc.json", "trials")


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_ranking_is_stable_among_equals(goal):
    runs = [("a", None, "running"), ("b", None, "running")]
    assert [r[0] for r in ranked(runs, value=lambda r: r[1], state=lambda r: r[2], goal=goal)] == ["a", "b"]


def test_the_newest_checkpoint_is_the_one_to_resume_from(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["epoch=0-step=10.ckpt", "last.ckpt", "epoch=1-step=20.ckpt"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, ns=(i * 10**9, i * 10**9))
    (folder / ".last.ckpt.123.tmp").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "epoch=1-step=20.ckpt"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # fails mid-write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_atomic(path, b"new")
    assert path.read_text() == "new"
