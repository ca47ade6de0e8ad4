"""``gradwatch replay FILE``: what it prints and its exit status, run in this process (the fresh-process runs are in
``tests/callbacks/test_nan_origin.py``)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch.cli import COMMANDS, main
from gradwatch.health.origin import NonfiniteTracer


class Tiny(pl.LightningModule):
    """``log`` of a linear layer's output, in ``training_step``: NaN for a batch that makes it negative."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(width, width)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = F.softplus(torch.log(self.linear(batch))).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def reproducer(tmp_path, batch: torch.Tensor) -> tuple[str | None, str]:
    """Trace one step of :class:`Tiny` on ``batch`` as training would; its finding and the reproducer's path."""
    model = Tiny()
    with torch.no_grad():
        model.linear.weight.copy_(torch.eye(3))
        model.linear.bias.zero_()
    tracer = NonfiniteTracer()
    tracer.batch_start(batch, 4)
    tracer.backward()
    origin, path = tracer.trace(model, step=4, folder=tmp_path, optimizers=[model.configure_optimizers()])
    return (origin.line if origin else None), str(path)


def replay(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", *args])
    return exit_.value.code or 0


def test_replay_is_a_command():
    assert "replay" in COMMANDS


def test_a_step_that_went_non_finite_prints_the_same_finding(tmp_path, capsys):
    line, path = reproducer(tmp_path, torch.tensor([[1.0, -2.0, 3.0]]))
    # The log is taken in training_step itself: outside every module, and the linear layer's output is finite.
    assert line == (
        "step 4: first non-finite value in the forward, outside any module: the loss (every module's output finite;"
        " 1 of 1 elements nan)"
    )
    main(["replay", path])
    assert capsys.readouterr().out.strip() == line


def test_a_step_that_replays_finite_exits_1(tmp_path, capsys):
    line, path = reproducer(tmp_path, torch.tensor([[1.0, 2.0, 3.0]]))
    assert line is None
    assert replay(path) == 1
    assert "step 4: replayed on cpu; every value was finite" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no such file"), ({"weights": 1}, "cannot be read as a reproducer: "), (b"junk", "cannot be read")],
    ids=["missing", "other-torch-file", "not-a-torch-file"],
)
def test_a_file_that_cannot_be_replayed_exits_2_in_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "nonfinite-step1.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert replay(str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"gradwatch replay: error: {path}")
    assert expected in err
