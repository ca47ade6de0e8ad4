"""The origin search without a Trainer: plain modules, a duck-typed training step, the reproducer file, the tracer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch.health.origin import (
    Count,
    NonfiniteTracer,
    Origin,
    ReplayInput,
    Reproducer,
    find_origin,
    training_step_replay,
)


class LogOf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class Block(nn.Module):
    """A linear layer, then ``log`` written in the block's own forward (no module of its own)."""

    def __init__(self, inline_log: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.inline_log = inline_log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return torch.log(x) if self.inline_log else x


class SqrtNorm(nn.Module):
    """``sqrt(x * 0) + x``: finite forward (sqrt(0) = 0), Inf in the backward (d sqrt / dx at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0).sqrt() + x


def negative_linear(linear: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        linear.weight.fill_(-1.0)
        linear.bias.zero_()
    return linear


def check(model: nn.Module, x: torch.Tensor, loss=lambda out: out.sum()):
    return lambda search: search.check(loss(model(x)))


def test_the_innermost_module_that_made_the_nan_from_finite_inputs_is_named():
    model = nn.Sequential(negative_linear(nn.Linear(4, 4)), nn.Sequential(LogOf(), nn.Linear(4, 2)))
    origin = find_origin(model, check(model, torch.ones(3, 4)), step=7)
    assert (origin.phase, origin.module, origin.count) == ("forward", "1.0", Count(nan=12, numel=12))
    # The linear layer after it and the containers around it had non-finite inputs: not the origin.
    assert (
        origin.line
        == "step 7: first non-finite value in the forward output of `1.0` (inputs finite; 12 of 12 elements nan)"
    )


def test_a_nan_made_by_a_modules_own_forward_code_names_that_module():
    model = nn.Sequential(Block(inline_log=False), Block(inline_log=True))
    with torch.no_grad():
        model[0].linear.weight.fill_(1.0)
        model[0].linear.bias.zero_()
    negative_linear(model[1].linear)  # ones → 4 → -16, whose log is NaN
    origin = find_origin(model, check(model, torch.ones(2, 4)))
    assert (origin.phase, origin.module) == ("forward", "1")


def test_a_nan_made_outside_every_module_is_the_loss():
    model = nn.Sequential(nn.Linear(4, 1))
    origin = find_origin(model, check(model, torch.ones(2, 4), loss=lambda out: torch.log(-out.abs() - 1).sum()))
    assert (origin.phase, origin.module) == ("forward", None)
    assert origin.describe() == (
        "first non-finite value in the forward, outside any module: the loss (every module's output finite; 1 of 1"
        " elements nan)"
    )


def test_an_inf_made_only_by_a_backward_is_named_with_its_node_and_source_line_despite_inplace_activations():
    # In-place ReLUs: module full backward hooks would fail on them; graph node hooks do not.
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), SqrtNorm(), nn.ReLU(inplace=True), nn.Linear(4, 1))
    origin = find_origin(model, check(model, torch.randn(8, 4)), step=2)
    assert (origin.phase, origin.module, origin.op) == ("backward", "2", "SqrtBackward0")
    assert origin.where.endswith(f"test_origin.py:{SqrtNorm.forward.__code__.co_firstlineno + 1} in forward")
    # 1 / sqrt(0): Inf where the incoming gradient is not 0, NaN where the ReLU after it zeroed it.
    assert (origin.count.nonfinite, origin.count.numel) == (32, 32)
    assert "first non-finite value in the backward of `2` (SqrtBackward0 at " in origin.line
    assert origin.line.endswith(f"; incoming gradient finite; {origin.count.describe()})")


def test_a_finite_step_has_no_origin_and_the_model_comes_out_as_it_went_in():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    model[0].weight.requires_grad_(False)
    model(torch.randn(16, 4)).sum().backward()
    grads = [p.grad for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    assert find_origin(model, check(model, x)) is None
    assert [p.grad for p in model.parameters()] == grads  # the same tensors, untouched
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model[0].weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_counts_say_which_kind():
    assert Count(nan=3, numel=10).describe() == "3 of 10 elements nan"
    assert Count(inf=1, numel=10).describe() == "1 of 10 elements inf"
    assert Count(nan=3, inf=2, numel=10).describe() == "5 of 10 elements non-finite (3 nan, 2 inf)"
    origin = Origin("forward", "", Count(nan=1, numel=1), model="Net", rank=1, micro_batch=1, micro_batches=4)
    assert origin.line == (
        "rank 1: step 0: first non-finite value in the forward output of the model itself (`Net`) (inputs finite; "
        "1 of 1 elements nan; micro-batch 2 of 4)"
    )


class ManualModule(nn.Module):
    """A LightningModule's shape under manual optimization, without Lightning: two optimizers, two backward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.log_of = nn.Linear(4, 1), nn.Linear(4, 4), LogOf()
        self.logged: list[str] = []

    def log(self, name: str, value: object) -> None:
        self.logged.append(name)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_first, opt_second = self.optimizers()
        loss = torch.log(self.first(batch).abs() + 1).sum()  # finite
        opt_first.zero_grad()
        self.manual_backward(loss)
        opt_first.step()
        self.toggle_optimizer(opt_second)
        loss = self.log_of(self.second(batch)).sum()  # NaN where the linear output is negative
        self.log("loss", loss)
        opt_second.zero_grad()
        self.manual_backward(loss)
        opt_second.step()
        self.untoggle_optimizer(opt_second)


def test_a_manual_step_is_replayed_without_stepping_logging_or_touching_gradients():
    torch.manual_seed(0)
    module = ManualModule()
    optimizers = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (module.first, module.second)]
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    weights = [p.detach().clone() for p in module.parameters()]
    batch = torch.randn(8, 4)
    inputs = [ReplayInput(batch, 5)]

    for window, expected in (((0, 1), None), ((1, 2), "log_of"), (None, "log_of")):
        run = training_step_replay(module, inputs, optimizers=optimizers, manual=True, backwards=window)
        origin = find_origin(module, run, step=5)
        assert (origin.module if origin else None) == expected, window

    assert module.logged == []
    assert all(torch.equal(p, w) for p, w in zip(module.parameters(), weights, strict=True))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in module.parameters())
    assert all(p.requires_grad for p in module.parameters())
    assert "optimizers" not in module.__dict__
    assert "manual_backward" not in module.__dict__


def test_a_reproducer_round_trips_and_replays_to_the_same_finding(tmp_path):
    torch.manual_seed(0)
    module = ManualModule()
    optimizers = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (module.first, module.second)]
    tracer = NonfiniteTracer()
    tracer.batch_start(torch.randn(8, 4), 5, manual=True)
    tracer.backward()
    tracer.stepped()  # the first optimizer's step: finite
    tracer.backward()
    origin, path = tracer.trace(module, step=5, folder=tmp_path, optimizers=optimizers, manual=True)
    assert tracer.done
    assert tracer.inputs == []  # nothing kept once traced
    assert path == tmp_path / "nonfinite-step5.pt"
    loaded = Reproducer.load(path)
    assert (loaded.model_class, loaded.backwards, loaded.finding) == (f"{__name__}.ManualModule", (1, 2), origin.line)
    again = ManualModule()
    again.load_state_dict(loaded.state_dict)
    again_optimizers = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (again.first, again.second)]
    assert loaded.run(again, again_optimizers).line == origin.line


def test_a_file_that_is_no_reproducer_is_refused(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a gradwatch reproducer"):
        Reproducer.load(tmp_path / "other.pt")


def test_the_tracer_keeps_only_the_current_steps_batches_and_only_when_asked():
    tracer = NonfiniteTracer()
    tracer.batch_start("a", 0)
    tracer.batch_start("b", 1)  # gradient accumulation: the same step
    assert [i.batch for i in tracer.inputs] == ["a", "b"]
    assert set(tracer.inputs[0].rng) == {"cpu"}
    tracer.stepped()
    assert tracer.inputs == []  # let go as soon as the step is taken
    tracer.batch_start("c", 2, keep=False)  # a step nobody checks: nothing kept
    assert tracer.inputs == []
    tracer.stepped()
    tracer.batch_start("d", 3, manual=True)
    tracer.stepped()  # manual optimization: another optimizer may step on the same batch
    assert [i.batch for i in tracer.inputs] == ["d"]
    tracer.batch_start("e", 4, manual=True)  # the current batch only
    assert [i.batch for i in tracer.inputs] == ["e"]
