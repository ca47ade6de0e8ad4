"""The report's figures and summary from runs on disk: thinning, binning, layout of the grid, plain language."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources

import numpy as np
import pytest

from gradwatch.report import figures
from gradwatch.report import format as fmt
from gradwatch.report.page import PLOTLY_JS
from gradwatch.report.runs import Run, Sweep, find
from gradwatch.report.summary import common_ground, sweep_summary


def decode(typed):
    values = np.frombuffer(base64.b64decode(typed["bdata"]), dtype="<" + typed["dtype"])
    return values.reshape([int(n) for n in typed["shape"].split(",")]) if "shape" in typed else values


def write_run(folder, layers, norms, vanishing=0, params=None):
    """A run folder whose ``norms[i][s]`` is layer i's gradient norm at step s."""
    folder.mkdir(parents=True)
    keys = [f"grad/norm/{layer}" for layer in layers]
    lines = ["step," + ",".join(keys) + ",health/vanishing,health/attenuation"]
    for step in range(len(norms[0])):
        cells = [f"{norms[i][step]}" for i in range(len(layers))]
        attenuation = np.log10(norms[0][step] / norms[-1][step])
        lines.append(f"{step}," + ",".join(cells) + f",{vanishing},{attenuation}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "hparams.yaml").write_text("gradwatch/layers: [" + ", ".join(layers) + "]\n")
    return Run(folder.name, folder, params or {})


def test_steps_travel_as_integers_and_values_as_float32():
    assert fmt.typed(np.array([0.0, 10.0, 60_000.0]))["dtype"] == "u2"
    assert fmt.typed(np.array([0.0, 100_000.0]))["dtype"] == "i4"
    assert fmt.typed(np.array([0.5, np.nan]))["dtype"] == "f4"
    np.testing.assert_array_equal(decode(fmt.typed(np.array([3.0, 7.0]))), [3, 7])


def test_thinning_keeps_the_spike_and_the_order():
    steps = np.arange(10_000, dtype=float)
    values = np.ones(10_000)
    values[7_777] = 1e6
    kept_steps, kept = fmt.thin(steps, values, points=100)
    assert len(kept) <= 100
    assert 1e6 in kept
    assert np.all(np.diff(kept_steps) > 0)


def test_the_flow_matrix_averages_log_norms_per_bin_input_layer_first(tmp_path):
    run = write_run(tmp_path / "r", ["b", "a"], [[1e-3] * 4 + [1e-5] * 4, [1.0] * 8])  # recorded order: b, a
    steps, matrix = figures.flow_matrix(run, columns=2)
    assert run.layers == ["b", "a"]
    assert steps.tolist() == [1.5, 5.5]
    np.testing.assert_allclose(matrix, [[-3, -5], [0, 0]])


def test_a_run_heatmap_marks_the_steps_a_verdict_stood(tmp_path):
    folder = tmp_path / "r"
    run = write_run(folder, ["a", "b"], [[1.0] * 6, [1.0] * 6])
    text = (folder / "metrics.csv").read_text().splitlines()
    flagged = [line.replace(",0,", ",2,", 1) if i in (3, 4) else line for i, line in enumerate(text)]
    (folder / "metrics.csv").write_text("\n".join(flagged) + "\n")
    run = Run("r", folder)
    assert figures.verdict_spans(run) == {"vanishing": [(2.0, 4.0)]}
    figure = figures.flow_heatmap(run)
    assert [shape["x0"] for shape in figure["layout"]["shapes"]] == [2.0]
    assert decode(figure["data"][0]["z"]).shape == (2, 6)


def test_the_grid_lays_out_problems_in_rows_and_remedies_in_columns(tmp_path):
    runs = []
    for depth in (4, 16):
        for residual in (False, True):
            for activation in ("relu", "tanh"):
                name = f"{depth}-{residual}-{activation}"
                params = {"depth": depth, "activation": activation, "residual": residual}
                runs.append(write_run(tmp_path / name, ["a", "b"], [[0.1] * 3, [1.0] * 3], params=params))
    sweep = Sweep("s", tmp_path, ["depth", "activation", "residual"], None, "minimize", runs)
    assert figures.facets(sweep) == (["depth"], ["activation", "residual"])
    grid = figures.heatmap_grid(sweep)
    assert len(grid["data"]) == 8
    labels = [a["text"] for a in grid["layout"]["annotations"]]
    assert labels == [
        "activation=relu<br>residual=False", "activation=relu<br>residual=True",
        "activation=tanh<br>residual=False", "activation=tanh<br>residual=True", "depth=4", "depth=16",
    ]  # fmt: skip


def test_parallel_coordinates_span_each_parameter_then_metric_and_attenuation(tmp_path):
    runs = [
        write_run(tmp_path / "a", ["x", "y"], [[1e-8] * 2, [1.0] * 2], 1, {"depth": 16, "activation": "tanh"}),
        write_run(tmp_path / "b", ["x", "y"], [[0.5] * 2, [1.0] * 2], 0, {"depth": 4, "activation": "relu"}),
    ]
    sweep = Sweep("s", tmp_path, ["depth", "activation"], None, "minimize", runs)
    figure = figures.parallel_coordinates(sweep)
    assert figure["layout"]["xaxis"]["ticktext"] == ["depth", "activation", "attenuation"]
    lines = [trace for trace in figure["data"] if trace.get("name") in ("a", "b")]
    assert [trace["y"] for trace in lines] == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize(
    ("vanished", "expected", "exact"),
    [
        ({(16, "tanh", False), (16, "sigmoid", False)}, "depth >= 16, sigmoid or tanh, without residual", True),
        ({(4, "tanh", False)}, "depth <= 4, tanh, without residual", True),
        ({(16, "tanh", False), (16, "tanh", True)}, "depth >= 16, tanh", True),
        ({(16, "tanh", False), (4, "relu", True)}, "relu or tanh", False),
        ({(16, "tanh", False), (4, "relu", True), (4, "sigmoid", False)}, "", False),
    ],
)
def test_common_ground_names_what_the_group_shares_and_whether_it_is_exact(tmp_path, vanished, expected, exact):
    runs = []
    for depth in (4, 16):
        for activation in ("relu", "sigmoid", "tanh"):
            for residual in (True, False):
                name = f"{depth}-{activation}-{residual}"
                params = {"depth": depth, "activation": activation, "residual": residual}
                runs.append(write_run(tmp_path / name, ["a"], [[1.0]], params=params))
    group = [run for run in runs if tuple(run.params.values()) in vanished]
    found = common_ground(group, runs, ["depth", "activation", "residual"])
    assert found == (expected, exact)


def test_a_healthy_sweep_says_so(tmp_path):
    run = write_run(tmp_path / "a", ["x"], [[1.0]], 0, {"depth": 4})
    summary = sweep_summary(Sweep("s", tmp_path, ["depth"], None, "minimize", [run]))
    assert summary == [
        "No run vanished, exploded, went non-finite or stalled: 1 of 1 healthy at their last measurement."
    ]


def test_the_vendored_plotly_is_the_version_its_readme_names():
    assets = resources.files("gradwatch.report") / "assets"
    digest = hashlib.sha256((assets / PLOTLY_JS).read_bytes()).hexdigest()
    readme = (assets / "README.md").read_text()
    assert digest in readme
    version = re.search(r"plotly\.js \*\*([\d.]+)\*\*", readme).group(1)
    assert f"v{version}" in (assets / PLOTLY_JS).read_text()[:200]


def test_activations_take_the_place_of_their_block_input_first(tmp_path):
    folder = tmp_path / "r"
    layers = ["stem.conv", *(f"blocks.{i}.conv" for i in range(11)), "head"]
    write_run(folder, layers, [[1.0]] * len(layers))
    acts = ["blocks.10.act", "blocks.2.act", "stem.act"]  # as the CSV header sorts them
    header = ["step", *(f"grad/norm/{layer}" for layer in layers), *(f"act/dead/{a}" for a in acts)]
    grads = ["0", *(["1.0"] * len(layers)), "", "", ""]
    dead = ["0", *([""] * len(layers)), "0.1", "0.2", "0.3"]  # the ActivationMonitor's row, as Lightning writes it
    (folder / "metrics.csv").write_text("\n".join(",".join(row) for row in (header, grads, dead)) + "\n")
    figure = figures.activation_fractions(Run("r", folder))
    assert [trace["name"] for trace in figure["data"]] == ["dead stem.act", "dead blocks.2.act", "dead blocks.10.act"]


def test_a_gans_two_optimizers_rows_at_one_step_are_one_column(tmp_path):
    folder = tmp_path / "gan"
    folder.mkdir()
    rows = ["step,grad/norm/discriminator.head,grad/norm/generator.stem"]
    rows += [f"{step},,0.1" + f"\n{step},10.0," for step in range(3)]  # G's row, then D's, at each step
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "hparams.yaml").write_text("gradwatch/layers: [generator.stem, discriminator.head]\n")
    steps, matrix = figures.flow_matrix(Run("gan", folder), columns=200)
    assert steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(matrix, [[-1, -1, -1], [1, 1, 1]])


def test_a_sweep_of_continuous_values_lays_its_grid_out_best_first_eight_to_a_row(tmp_path):
    runs = []
    for i in range(10):  # ten learning rates: too many values to be a row or a column
        runs.append(write_run(tmp_path / f"r{i}", ["a", "b"], [[0.1] * 3, [1.0] * 3], params={"lr": 10.0**-i}))
    sweep = Sweep("s", tmp_path, ["lr"], None, "minimize", runs)
    assert figures.facets(sweep) == ([], [])
    grid = figures.heatmap_grid(sweep)
    assert [trace["name"] for trace in grid["data"]] == [f"r{i}" for i in range(10)]
    rows = {grid["layout"][f"yaxis{'' if k == 1 else k}"]["domain"][1] for k in range(1, 11)}
    assert len(rows) == 2


def write_trial(sweep_dir, run_id, acc, params):
    """A trial's run folder and parameter file, as the local sweep engine leaves them."""
    run_dir = sweep_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    rows = "".join(f"{step},{value},0\n" for step, value in enumerate(acc))
    (run_dir / "metrics.csv").write_text("step,val/acc,health/vanishing\n" + rows)
    (sweep_dir / "trials").mkdir(exist_ok=True)
    (sweep_dir / "trials" / f"config-{run_id}.json").write_text(json.dumps(params))
    return str(run_dir)


def test_the_best_run_is_a_finished_one_even_when_a_pruned_trial_logged_a_better_value(tmp_path):
    sweep_dir = tmp_path / "sweep"
    config = {"name": "lr", "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": {"lr": {"values": [1]}}}
    (sweep_dir / "runs").mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(json.dumps(config))
    results = [
        {"run_dir": write_trial(sweep_dir, "pruned", [0.5, 0.95], {"lr": 0.1}), "state": "pruned"},
        {"run_dir": write_trial(sweep_dir, "done", [0.4, 0.6, 0.8], {"lr": 0.01}), "state": "finished"},
        {"run_dir": write_trial(sweep_dir, "broken", [0.99], {"lr": 1.0}), "state": "failed"},
    ]
    (sweep_dir / "results.json").write_text(json.dumps(results))
    (sweep,) = find(sweep_dir).sweeps
    assert [run.id for run in sweep.ranked()] == ["done", "pruned", "broken"]  # the sweep table's order
    assert sweep_summary(sweep)[-1] == "Best val/acc: 0.8 (run done: lr 0.01)."


def test_a_stalled_run_is_summed_up_with_what_it_shares_and_the_monitors_advice(tmp_path):
    runs = []
    for activation in ("relu", "sigmoid"):
        run = write_run(tmp_path / activation, ["a", "b"], [[1.0], [1.0]], 0, {"activation": activation})
        text = (run.dir / "metrics.csv").read_text().splitlines()
        stalled = int(activation == "sigmoid")
        (run.dir / "metrics.csv").write_text(
            "\n".join([text[0] + ",health/stalled", *(line + f",{stalled}" for line in text[1:])]) + "\n"
        )
        if stalled:
            line = {"verdict": "stalled", "advice": "likely cause: sigmoid units saturated; try activation=relu"}
            (run.dir / "verdicts.jsonl").write_text(json.dumps(line) + "\n")
        runs.append(run)
    summary = sweep_summary(Sweep("s", tmp_path, ["activation"], None, "minimize", runs))
    assert summary[0] == ("1 of 2 runs stalled: sigmoid. Likely cause: sigmoid units saturated; try activation=relu.")
