"""``gradwatch report`` as users run it: what it finds under a path, runs in progress, and bad paths."""

from __future__ import annotations

import subprocess
import sys

import pytest
from report_data import gradwatch, run_sweep

from gradwatch.report.runs import ReportError, find


def write_run(folder, rows, header="epoch,grad/norm/head,grad/norm/stem,health/vanishing,step,train/loss"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "{path}: no such file or folder"),
        (lambda p: p, "{path}: nothing to report"),
        (lambda p: write_run(p / "run", []), "{path}: nothing to report"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "{path}: not a run folder"),
    ],
    ids=["missing", "empty folder", "header only", "a file"],
)
def test_a_path_with_nothing_to_report_exits_2_in_one_line(tmp_path, make, message):
    path = make(tmp_path)
    done = gradwatch("report", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("gradwatch report: " + message.format(path=path))
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_an_output_that_cannot_be_written_is_named(tmp_path):
    write_run(tmp_path / "run", ["0,1.0,0.1,0,0,2.3"])
    (tmp_path / "taken").write_text("a file, not a folder")
    done = gradwatch("report", "run", "-o", "taken/report.html", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("gradwatch report: taken/report.html: cannot write the report")


def test_a_run_in_progress_is_reported_as_far_as_it_got(tmp_path):
    # The logger is mid-row: the last line has no newline yet and must not be read.
    run = write_run(tmp_path / "run", ["0,1.0,0.1,0,0,2.3", "0,1.0,0.01,0,1,2.1"])
    with (run / "metrics.csv").open("a") as f:
        f.write("0,1.0,0.00")

    done = gradwatch("report", "run", cwd=tmp_path, check=True)

    assert f"gradwatch report: {run / 'report.html'}" in done.stdout
    (found,) = find(run).runs
    steps, values = found.metrics.series("grad/norm/stem")
    assert steps.tolist() == [0, 1]
    assert values.tolist() == pytest.approx([0.1, 0.01])
    assert found.layers == ["head", "stem"]  # no recorded order: natural order of the columns


def test_a_sweep_still_running_has_no_results_yet_and_is_reported(tmp_path):
    sweep = run_sweep(tmp_path, parameters={"depth": {"values": [4, 16]}, "activation": {"values": ["tanh"]}})
    (sweep / "results.json").unlink()  # as before the controller writes it, at the end

    gradwatch("report", str(sweep), cwd=tmp_path, check=True)

    (found,) = find(sweep).sweeps
    assert [run.state for run in found.runs] == [None, None]
    html = (sweep / "report.html").read_text()
    assert "1 of 2 runs vanished: depth &gt;= 16." in html


def test_a_folder_of_sweeps_and_runs_finds_each_once(tmp_path):
    run_sweep(tmp_path / "a", parameters={"depth": {"values": [4]}, "activation": {"values": ["relu"]}})
    write_run(tmp_path / "lightning_logs" / "version_0", ["0,1.0,0.1,0,0,2.3"])
    write_run(tmp_path / "lightning_logs" / "version_1", ["0,1.0,0.1,3,0,2.3"])

    found = find(tmp_path)

    assert [s.name for s in found.sweeps] == ["vanish"]
    assert len(found.sweeps[0].runs) == 1
    assert [r.id for r in found.runs] == ["lightning_logs/version_0", "lightning_logs/version_1"]
    assert [r.verdicts() for r in found.runs] == [[], ["vanishing"]]
    done = gradwatch("report", ".", "-o", "all.html", cwd=tmp_path, check=True)
    assert "all.html" in done.stdout


def test_find_raises_a_config_error_naming_the_path(tmp_path):
    with pytest.raises(ReportError, match="nothing to report") as caught:
        find(tmp_path)
    assert isinstance(caught.value, ValueError)


def test_the_report_command_imports_no_torch_lightning_or_wandb():
    code = (
        "import sys; import gradwatch.cli.report, gradwatch.report.page, gradwatch.report.figures; "
        "print(sorted(m for m in ('torch', 'lightning', 'wandb', 'plotly') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_gan_run_shows_its_latest_samples_grid(tmp_path):
    from PIL import Image

    run = write_run(tmp_path / "gan", ["0,1.0,0.1,0,0,2.3"])
    (run / "samples").mkdir()
    for step, shade in ((9, 0), (10, 255)):  # numeric order: step 10 is the latest, though "10" < "9" as text
        Image.new("RGB", (73, 73), (shade, shade, shade)).save(run / "samples" / f"val-samples-{step}.png")

    gradwatch("report", "gan", cwd=tmp_path, check=True)

    html = (run / "report.html").read_text()
    assert html.count('<figure class="gw-samples">') == 1
    assert "val/samples at step 10" in html
