"""The ``gradwatch`` command as users run it: real processes, offline W&B runs and CSV files read back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import column, read_metrics
from gradwatch.cli.fit import main
from wandb_records import config, exit_code, history, run_file

QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def gradwatch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gradwatch ARGS`` in ``cwd``, offline, and return the finished process."""
    environ = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    # A test earlier in this worker that ran W&B in-process left WANDB_SERVICE set: a child would attach to that
    # worker's W&B service instead of starting its own, as a user's command does.
    environ.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [sys.executable, "-m", "gradwatch", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


#: Upstream lines no run of ours should print: advertisements, deprecations we cause, warnings about our own folders.
NOISE = ("💡 Tip", "anonymous setting", "exists and is not empty", "dirpath has changed")


def assert_quiet(run: subprocess.CompletedProcess) -> None:
    said = run.stdout + run.stderr
    assert not [noise for noise in NOISE if noise in said], said[-3000:]


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def test_with_wandb_disabled_a_run_closes_with_its_csv_alone(tmp_path):
    fit = gradwatch(
        "fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "2", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1", *QUICK, cwd=tmp_path, env={"WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    (line,) = [line for line in fit.stdout.splitlines() if line.startswith("gradwatch:")]
    assert line.endswith("/metrics.csv"), line  # no W&B run to point to, and nothing in its place
    assert not list(tmp_path.glob("runs/*/wandb/*-run-*"))


@pytest.mark.slow
def test_fit_cnn_on_digits_then_validate_and_test_its_checkpoint(tmp_path):
    fit = gradwatch(
        "fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "3", "--model.residual", "true",
        "--trainer.max_epochs", "2", *QUICK, cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    run_id = run_dir.name
    # One line says where the metrics and the W&B run went, and how to upload the run.
    (line,) = [line for line in fit.stdout.splitlines() if line.startswith("gradwatch:")]
    wandb_dir = next((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert f"metrics in {Path('runs') / run_id / 'metrics.csv'}" in line
    assert "gradients healthy" in line  # the GradientMonitor runs by default and found nothing wrong
    assert f"upload: wandb sync {wandb_dir.relative_to(tmp_path)}" in line or f"wandb sync {wandb_dir}" in line

    assert_quiet(fit)
    rows = read_metrics(run_dir / "metrics.csv")
    assert len(column(rows, "val/acc")) == 2
    assert column(rows, "train/loss")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "gradwatch.CNN"
    assert saved["model"]["init_args"]["depth"] == 3

    wandb_file = run_file(run_dir)
    assert exit_code(wandb_file) == 0
    logged = history(wandb_file)
    assert any("train/loss" in row for row in logged)
    assert [row["val/acc"] for row in logged if "val/acc" in row] == pytest.approx(column(rows, "val/acc"))
    hparams = config(wandb_file)
    assert (hparams["depth"], hparams["residual"], hparams["num_classes"], hparams["in_channels"]) == (3, True, 10, 1)

    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    known = {run_dir}
    # The checkpoint is the last epoch's: validating it again scores exactly what fit's last validation did.
    for subcommand, key, tolerance in (("validate", "val/acc", 1e-6), ("test", "test/acc", 0.25)):
        args = ["--model", "CNN", "--data", "DigitsDataModule", "--ckpt_path", str(checkpoint), *QUICK]
        run = gradwatch(subcommand, *args, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert_quiet(run)
        (new_dir,) = {p for p in (tmp_path / "runs").iterdir() if p.is_dir()} - known
        known.add(new_dir)
        (score,) = column(read_metrics(new_dir / "metrics.csv"), key)
        assert score == pytest.approx(column(rows, "val/acc")[-1], abs=tolerance), subcommand

    # Predict: the test set's logits, in order, saved beside the run's files.
    run = gradwatch("predict", "--model", "CNN", "--data", "DigitsDataModule", "--ckpt_path", str(checkpoint),
                    *QUICK, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("gradwatch:")]
    saved = Path(line.split("predictions in ")[1].split(";")[0])
    logits = torch.load(tmp_path / saved)
    assert logits.shape == (270, 10)  # 15% of the 1,797 digits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "data", "keys", "extra"),
    [
        ("RNN", "AddingProblemDataModule", ["train/loss", "val/loss"], []),
        ("RNN", "CopyMemoryDataModule", ["train/loss", "val/loss", "val/acc"], ["--data.delay", "10"]),
        ("RNN", "SequentialDigitsDataModule", ["train/loss", "val/acc"], ["--data.order", "row"]),
        (
            "GAN",
            "DigitsDataModule",
            ["train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "val/d_loss"],
            ["--model.d_activation", "torch.nn.Mish"],  # any class by import path
        ),
    ],
)
def test_every_family_trains_with_no_shape_arguments(model, data, keys, extra, tmp_path):
    run = gradwatch(
        "fit", "--model", model, "--data", data, "--trainer.max_steps", "12", "--trainer.val_check_interval", "3",
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "2", "--trainer.default_root_dir", "out",
        *extra, *QUICK, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    run_dir = only_run_dir(tmp_path / "out")
    rows = read_metrics(run_dir / "metrics.csv")
    logged = history(run_file(run_dir))
    for key in keys:
        assert column(rows, key), key
        assert any(key in row for row in logged), key


@pytest.mark.slow
def test_fit_with_strong_augmentation_and_workers_records_the_preset(tmp_path):
    run = gradwatch(
        "fit", "--model", "CNN", "--model.depth", "2", "--data", "DigitsDataModule", "--data.augment", "strong",
        "--data.num_workers", "2", "--data.val_split", "200", "--trainer.max_steps", "6",
        "--trainer.log_every_n_steps", "2", *QUICK, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert column(read_metrics(run_dir / "metrics.csv"), "train/loss")
    hparams = config(run_file(run_dir))
    assert (hparams["augment"], hparams["num_workers"], hparams["val_split"]) == ("strong", 2, 200)


@pytest.mark.slow
def test_config_file_and_a_users_own_subclass_and_activation(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            import gradwatch
            from gradwatch.layers import register_activation

            register_activation("hardswish", nn.Hardswish)


            class WideHeadCNN(gradwatch.CNN):
                def build_head(self, num_features):
                    classes = self.hparams.num_classes
                    return nn.Sequential(nn.Linear(num_features, 64), nn.ReLU(), nn.Linear(64, classes))
            """
        )
    )
    (tmp_path / "experiment.yaml").write_text(
        textwrap.dedent(
            """
            model:
              class_path: mymodels.WideHeadCNN
              init_args:
                depth: 2
                activation: hardswish
                optimizer:
                  class_path: torch.optim.SGD
                  init_args: {lr: 0.05, momentum: 0.9}
            data:
              class_path: gradwatch.data.DigitsDataModule
              init_args: {batch_size: 32}
            trainer:
              max_steps: 5
              log_every_n_steps: 1
            """
        )
    )
    run = gradwatch("fit", "--config", "experiment.yaml", *QUICK, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert len(column(read_metrics(run_dir / "metrics.csv"), "train/loss")) == 5
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "mymodels.WideHeadCNN"
    assert saved["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"


@pytest.mark.slow
def test_print_config_shows_every_argument_and_the_gan_optimizer(tmp_path):
    run = gradwatch("fit", "--model", "GAN", "--data", "DigitsDataModule", "--print_config", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    printed = yaml.safe_load(run.stdout)
    gan = printed["model"]["init_args"]
    adam = {"lr": 0.0002, "betas": [0.5, 0.999], "weight_decay": 0.0}
    assert gan["generator_optimizer"] == {"class_path": "gradwatch.models.GANAdam", "init_args": adam}
    assert gan["loss"] == "nonsaturating"
    assert printed["trainer"]["logger"] is None  # gradwatch's W&B + CSV loggers
    assert not (tmp_path / "runs").exists()


BAD_INPUT = [
    (["--model", "CNN", "--model.depth", "0"], "--model.depth: CNN: depth must be >= 1, got 0"),
    (
        ["--model", "CNN", "--model.activation", "relux"],
        "--model.activation: unknown activation 'relux'; valid: elu, gelu, identity, leaky_relu, relu, selu, sigmoid,"
        " silu, softplus, tanh (did you mean 'relu'?)",
    ),
    (
        ["--model", "CNN", "--model.norm", "spectral"],
        "--model.norm: unknown norm 'spectral'; valid: batch, group, instance, layer, none",
    ),
    (["--model", "CNN", "--model.init", "he"], "--model.init: unknown init 'he'"),
    (
        ["--model", "CNN", "--model.backbone", "resnet19"],
        "--model.backbone: torchvision has no classification model 'resnet19'",
    ),
    (
        ["--model", "CNN", "--model.num_classes", "5"],
        "--model.num_classes: CNN(num_classes=5) contradicts DigitsDataModule, whose data has num_classes=10",
    ),
    (
        ["--model", "CNN", "--model.in_channels", "3"],
        "--model.in_channels: CNN(in_channels=3) contradicts DigitsDataModule",
    ),
    (
        ["--model", "RNN", "--model.cell", "lstmx"],
        "--model.cell: unknown cell 'lstmx'; valid: gru, lstm, rnn (did you mean 'lstm'?)",
    ),
    (["--model", "RNN"], "--model.task: RNN needs sequences"),
    (
        ["--model", "GAN", "--model.loss", "wgan"],
        "--model.loss: unknown loss 'wgan'; valid: hinge, nonsaturating, wgan-gp",
    ),
    (
        ["--model", "GAN", "--model.g_norm", "spectral"],
        "--model.g_norm: GAN: 'spectral' is a discriminator weight norm",
    ),
    (["--model", "GAN", "--model.loss", "wgan-gp", "--model.d_norm", "batch"], "--model.d_norm: GAN: loss='wgan-gp'"),
    (
        ["--model", "CNN", "--data.image_size", "0"],
        "--data.image_size: DigitsDataModule: image_size must be >= 1, got 0",
    ),
    (
        ["--model", "CNN", "--data.augment", "strog"],
        "--data.augment: unknown augment preset 'strog'; valid: light, none, standard, strong (did you mean 'strong'?)",
    ),
    (["--model", "CNN", "--data.augment", "mine.yaml"], "--data.augment: augment file 'mine.yaml' does not exist"),
    (
        ["--model", "CNN", "--data.val_split", "1.5"],
        "--data.val_split: DigitsDataModule: val_split must be a fraction in (0, 1) or a count, got 1.5",
    ),
    (
        ["--model", "CNN", "--data", "MNISTDataModule", "--data.data_dir", "nowhere", "--data.download", "false"],
        "--data.data_dir: MNISTDataModule: nowhere/MNIST/raw lacks train-images-idx3-ubyte",
    ),
    (
        ["--model", "CNN", "--data", "ImageFolderDataModule", "--data.data_dir", "nowhere"],
        "--data.data_dir: ImageFolderDataModule: data_dir 'nowhere' is not a folder",
    ),
    (
        ["--model", "CNN", "--gradients.on_exploding", "sotp"],
        "--gradients.on_exploding: GradientMonitor: on_exploding: unknown action 'sotp'; valid: alert, raise, stop,"
        " warn (did you mean 'stop'?)",
    ),
    (
        ["--model", "CNN", "--gradients.on_vanishing", "skip"],
        "--gradients.on_vanishing: GradientMonitor: on_vanishing: unknown action 'skip'; valid: alert, raise, stop,"
        " warn",
    ),
    (["--model", "CNN", "--gradients.patience", "0"], "--gradients.patience: GradientMonitor: patience must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_paragraph_before_any_run(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gradwatch"])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data", "DigitsDataModule", *args, "--trainer.max_steps", "1", *QUICK])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gradwatch: error:")]
    assert lines == [f"gradwatch: error: {lines[0].removeprefix('gradwatch: error: ')}"]
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no run was created, nothing trained


@pytest.mark.slow
def test_gradient_monitor_is_on_by_default_and_stops_a_vanishing_run(tmp_path):
    run = gradwatch(
        "fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "12", "--model.activation", "sigmoid",
        "--model.norm", "none", "--trainer.max_epochs", "3", "--gradients.log_every_n_steps", "2",
        "--gradients.on_vanishing", "stop", *QUICK, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (stop,) = [line for line in run.stderr.splitlines() if line.startswith("gradwatch: stopping: step 4:")]
    assert "vanishing gradients in" in stop
    assert "try activation=relu / residual=true / norm=batch" in stop
    (summary,) = [line for line in run.stdout.splitlines() if line.startswith("gradwatch:")]
    assert "gradients: vanishing in" in summary
    run_dir = only_run_dir(tmp_path / "runs")
    rows = read_metrics(run_dir / "metrics.csv")
    assert column(rows, "health/vanishing")[-1] > 0
    assert len(column(rows, "grad/norm/backbone.stem.conv")) == 3  # steps 0, 2 and 4, then it stopped
    logged = history(run_file(run_dir))
    assert any("grad/norm/head" in row for row in logged)
    assert exit_code(run_file(run_dir)) == 0
    # The end of fit drew the gradient flow, beside the metrics.
    drawn = sorted(p.name.rsplit("-", 1)[0] for p in (run_dir / "gradient-flow").iterdir())
    assert drawn == ["grad-flow-bars", "grad-flow-heatmap"]


def test_argument_of_the_wrong_type_is_rejected_by_the_parser(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gradwatch"])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model", "CNN", "--data", "DigitsDataModule", "--model.depth", "many"])
    assert info.value.code == 2
    assert re.search(r"depth.*many", capsys.readouterr().err, re.DOTALL)


CONSOLE = Path(sys.executable).with_name("gradwatch")  # the console script `make setup` installs
DIGITS = ["fit", "--model", "CNN", "--data", "DigitsDataModule"]
MISTAKES = [
    (
        [*DIGITS, "--model.activaton", "relu"],
        "--model.activaton: CNN has no option 'activaton' (did you mean 'activation'?)",
    ),
    (
        [*DIGITS, "--trainer.max_epohcs", "1"],
        "--trainer.max_epohcs: no such option (did you mean --trainer.max_epochs?)",
    ),
    ([*DIGITS, "--trainer.max_epoch", "1"], "--trainer.max_epoch: no such option (did you mean --trainer.max_epochs?)"),
    (["fit", "--model", "cnn", "--data", "DigitsDataModule"], "--model cnn: no model 'cnn' (did you mean 'CNN'?)"),
    (
        ["fit", "--model", "CNN", "--data", "DigitDataModule"],
        "--data DigitDataModule: no DataModule 'DigitDataModule' (did you mean 'DigitsDataModule'?)",
    ),
    ([*DIGITS, "--model.depth", "abc"], "--model.depth abc: expected a whole number"),
    ([*DIGITS, "--model.depth", "2.5"], "--model.depth 2.5: expected a whole number"),
    ([*DIGITS, "--model.optimizer.lr", "fast"], "--model.optimizer.lr fast: expected a number"),
    ([*DIGITS, "--model.residual", "maybe"], "--model.residual maybe: expected true or false"),
    ([*DIGITS, "--model.lr", "0.1"], "--model.lr: CNN has no option 'lr'"),
    (
        ["fit", "--config", "unknown-key.yaml", "--data", "DigitsDataModule"],
        "unknown-key.yaml, line 4: CNN has no option 'depht' (did you mean 'depth'?)",
    ),
    (
        ["fit", "--config", "broken.yaml", "--data", "DigitsDataModule"],
        "broken.yaml, line 5, column 1: expected ',' or ']'",
    ),
    (["fit", "--config", "nope.yaml"], "--config nope.yaml: no such file"),
    (["fitt"], "unknown command 'fitt' (did you mean 'fit'?); commands: fit, validate, test, predict, sweep, report"),
]


@pytest.mark.parametrize(("args", "message"), MISTAKES, ids=[" ".join(a[-2:]) for a, _ in MISTAKES])
def test_a_mistake_on_the_command_line_is_at_most_three_lines(args, message, tmp_path, capsys, monkeypatch):
    from gradwatch.cli import main as gradwatch_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "unknown-key.yaml").write_text("model:\n  class_path: CNN\n  init_args:\n    depht: 3\n")
    (tmp_path / "broken.yaml").write_text("model:\n  class_path: CNN\n  init_args:\n    depth: [3\n")
    monkeypatch.setattr(sys, "argv", ["gradwatch", *args])
    with pytest.raises(SystemExit) as info:
        gradwatch_main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, err
    assert lines[0].startswith("gradwatch: error: ")
    assert message in err
    assert "Traceback" not in err
    assert "usage:" not in err
    assert not (tmp_path / "runs").exists()


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    return subprocess.run([str(CONSOLE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_bare_gradwatch_and_help_list_every_command(tmp_path):
    for args, code in (((), 2), (("--help",), 0)):
        done = console(*args, cwd=tmp_path)
        assert done.returncode == code
        for command in ("fit", "validate", "test", "predict", "sweep", "report", "dashboard"):
            assert re.search(rf"^  {command} +\S", done.stdout, re.MULTILINE), command


@pytest.mark.slow
def test_the_console_script_imports_a_users_module_beside_their_config(tmp_path):
    (tmp_path / "mypackage.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            import gradwatch


            class MLPHeadCNN(gradwatch.CNN):
                def build_head(self, num_features):
                    classes = self.hparams.num_classes
                    return nn.Sequential(nn.Linear(num_features, 32), nn.ReLU(), nn.Linear(32, classes))
            """
        )
    )
    done = console(
        "fit", "--model", "mypackage.MLPHeadCNN", "--data", "DigitsDataModule", "--print_config", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "class_path: mypackage.MLPHeadCNN" in done.stdout
