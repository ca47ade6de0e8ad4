"""GradientTracker's rules in plain PyTorch loops, without a Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.errors import ConfigError
from gradwatch.health import Verdict
from gradwatch.health.tracker import GradientTracker, TrackerConfig


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def train(tracker, model, optimizer, steps, *, start=0, poison=None):
    """``steps`` plain SGD steps; the reports, by step. ``poison(step, model)`` may spoil gradients."""
    reports = {}
    for step in range(start, start + steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        tracker.observe(loss)
        loss.backward()
        if poison is not None:
            poison(step, model)
        report = tracker.step(optimizer, step=step)
        if report is not None:
            reports[step] = report
            if report.drop_gradients:
                optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return reports


def test_cadence_is_counted_in_each_optimizers_own_steps():
    model = net()
    fast = torch.optim.SGD(model[0].parameters(), lr=0.1)
    slow = torch.optim.SGD([*model[2].parameters(), *model[4].parameters()], lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=2))
    tracker.watch(fast, "fast")
    tracker.watch(slow, "slow")
    measured = {"fast": [], "slow": []}
    for batch in range(12):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        tracker.observe(loss)
        loss.backward()
        for name, optimizer in (("fast", fast), ("slow", slow)):
            if name == "fast" or batch % 3 == 2:  # the slow one steps once every three batches
                if tracker.step(optimizer, step=batch) is not None:
                    measured[name].append(batch)
                optimizer.step()
        fast.zero_grad()
        slow.zero_grad()
    assert measured["fast"] == [0, 2, 4, 6, 8, 10]
    assert measured["slow"] == [2, 8]  # its own steps 0 and 2 (batches 2, 5, 8, 11)
    assert [g.optimizer_steps for g in tracker.groups] == [12, 4]


def test_layers_follow_the_trainable_parameters_and_param_groups():
    model = net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=1))
    (group,) = [tracker.watch(optimizer)]
    reports = train(tracker, model, optimizer, 2)
    assert group.names == ("2", "4")
    assert reports[0].layout_changed  # the first layout
    assert not reports[1].layout_changed
    # Unfrozen and added as a param group, as BaseFinetuning does: measured from the next step, in forward order.
    for p in model[0].parameters():
        p.requires_grad_(True)
    optimizer.add_param_group({"params": list(model[0].parameters()), "lr": 0.01})
    reports = train(tracker, model, optimizer, 2, start=2)
    assert reports[2].layout_changed
    assert group.names == ("0", "2", "4")
    assert group.order == ["0", "2", "4"]
    assert np.isnan(group.history["0"][:2]).all()
    assert np.isfinite(group.history["0"][2:]).all()
    # Frozen again without leaving the optimizer: no longer measured, but it keeps its row in the heatmap.
    for p in model[2].parameters():
        p.requires_grad_(False)
    train(tracker, model, optimizer, 1, start=4)
    assert group.names == ("0", "4")
    names, norms = group.heatmap()
    assert names == ["0", "2", "4"]
    assert norms.shape == (3, 5)
    assert np.isnan(norms[1, -1])


def test_layers_unfrozen_later_are_placed_by_the_first_pass_that_uses_them():
    class Reversed(nn.Module):
        """Registration order (head, body) is not forward order (body, head)."""

        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(self.body(x))

    model = Reversed()
    model.body.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=1))
    group = tracker.watch(optimizer)
    train(tracker, model, optimizer, 1)
    model.body.requires_grad_(True)
    train(tracker, model, optimizer, 1, start=1)
    assert group.names == ("body", "head")


def test_tied_weights_count_once_in_the_total():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10)
            self.head.weight = self.embedding.weight

        def forward(self, x):
            return self.head(self.embedding(x))

    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model)
    tracker.watch(optimizer)
    loss = model(torch.randint(0, 10, (6,))).logsumexp(-1).mean()
    tracker.observe(loss)
    loss.backward()
    report = tracker.step(optimizer, step=0)
    expected = torch.nn.utils.get_total_norm([p.grad.double() for p in model.parameters()])
    assert report.measurement.total_norm == pytest.approx(float(expected), rel=1e-6)
    assert report.group.names == ("embedding", "head")


def nan_in_first_layer(steps):
    def poison(step, model):
        if step in steps:
            model[0].weight.grad.view(-1)[0] = math.nan

    return poison


def test_skip_counts_steps_in_a_row_then_stops():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=10, actions={"nonfinite": "skip"}, max_skips=2))
    tracker.watch(optimizer)
    reports = train(tracker, model, optimizer, 8, poison=nan_in_first_layer({2, 3, 4, 6}))
    assert sorted(reports) == [0, 2, 3, 4, 6]  # the guard measured the bad steps
    assert [a.action for a in reports[2].actions] == ["skip"]
    assert reports[3].actions[0].note == "optimizer step skipped, 2 of 2"
    assert reports[4].actions[0].action == "stop"
    assert reports[4].actions[0].note == "2 steps skipped in a row"
    assert reports[6].actions[0].note == "optimizer step skipped, 1 of 2"  # a finite step in between reset the count
    assert all(reports[s].drop_gradients for s in (2, 3, 4, 6))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_warning_is_said_when_a_verdict_appears_not_while_it_stands():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=1, actions={"nonfinite": "warn"}))
    tracker.watch(optimizer)
    reports = train(tracker, model, optimizer, 4, poison=lambda step, m: m[0].weight.grad.mul_(math.nan))
    assert [len(reports[s].actions) for s in range(4)] == [1, 0, 0, 0]
    assert [f.verdict for f in tracker.findings] == [Verdict.NONFINITE]
    # Warned, the NaN reached the weights: every layer's gradient is NaN by now, and the count says so.
    assert tracker.metrics(reports[3])["health/nonfinite"] == len(tracker.findings[0].layers) == 3


def test_metrics_name_every_layer_and_the_groups_totals():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=1))
    tracker.watch(optimizer)
    reports = train(tracker, model, optimizer, 2)
    metrics = tracker.metrics(reports[1], clip=0.5)
    assert {k for k in metrics if k.startswith("grad/norm/")} == {"grad/norm/0", "grad/norm/2", "grad/norm/4"}
    assert {k for k in metrics if k.startswith("grad/update_ratio/")} == {f"grad/update_ratio/{n}" for n in "024"}
    assert metrics["grad/clip_norm"] == 0.5
    assert metrics["health/vanishing"] == 0
    assert "grad/scaler_skips" not in metrics  # no scaler


def test_state_round_trips_and_reads_older_checkpoints():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=2))
    group = tracker.watch(optimizer)
    train(tracker, model, optimizer, 5)
    state = tracker.state_dict()
    again = GradientTracker(model, TrackerConfig(every=2))
    restored = again.watch(optimizer)
    again.load_state_dict(state)
    assert (restored.steps, restored.history, restored.optimizer_steps) == (group.steps, group.history, 5)
    older = {"": {**state[""], "names": ["0", "2", "4"], "history": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}}
    del older[""]["order"], older[""]["optimizer_steps"]
    older[""]["steps"] = [0, 2]
    third = GradientTracker(model)
    restored = third.watch(optimizer)
    third.load_state_dict(older)
    assert restored.history == {"0": [1.0, 4.0], "2": [2.0, 5.0], "4": [3.0, 6.0]}
    assert restored.optimizer_steps == 3


def test_a_gradscaler_skip_is_counted_and_is_not_a_verdict_while_it_can_lower_its_scale():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    tracker = GradientTracker(model, TrackerConfig(every=1, actions={"nonfinite": "stop"}), scaler=scaler)
    tracker.watch(optimizer)
    findings = []
    for step in range(4):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(8, 4)).pow(2).mean()
        tracker.observe(loss)
        scaler.scale(loss).backward()
        if step >= 1:
            model[0].weight.grad.view(-1)[0] = math.inf
        scaler.unscale_(optimizer)
        report = tracker.step(optimizer, step=step)
        findings.append(([f.verdict for f in report.group.findings], report.scaler_skips, bool(report.actions)))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    # Scale 4, then 2, then 1: at 1 the scaler can do no more, and the gradients are still not finite.
    assert findings == [
        ([], 0, False),
        ([], 1, False),
        ([], 1, False),
        ([Verdict.NONFINITE], 1, True),
    ]


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ({"every": 0}, "every"),
        ({"group_depth": 0}, "group_depth"),
        ({"max_skips": -1}, "max_skips"),
        ({"actions": {"vanishing": "skip"}}, "on_vanishing"),
        ({"thresholds": {"patience": 0}}, "patience"),
        ({"include": [""]}, "include"),
    ],
)
def test_bad_configuration_names_the_argument(args, param):
    with pytest.raises(ConfigError) as info:
        TrackerConfig(**args)
    assert info.value.param == param


def test_fsdp1_flat_parameters_are_refused_with_the_fix():
    from torch.distributed.fsdp._flat_param import FlatParameter

    flat = FlatParameter(torch.zeros(8), requires_grad=True)  # what FSDP1 without use_orig_params optimizes
    with pytest.raises(ConfigError, match=r"create the strategy with use_orig_params=True"):
        GradientTracker(net()).watch(torch.optim.SGD([flat], lr=0.1))


def test_a_layout_change_between_measurements_is_reported_at_the_next_one():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = GradientTracker(model, TrackerConfig(every=3))  # measures at 0, 3, 6; snapshots at 2, 5
    group = tracker.watch(optimizer)
    assert sorted(train(tracker, model, optimizer, 4)) == [0, 3]
    for p in model[4].parameters():
        p.requires_grad_(False)  # noticed at the snapshot step 5, reported at step 6
    reports = train(tracker, model, optimizer, 4, start=4)
    assert sorted(reports) == [6]
    assert reports[6].layout_changed
    assert group.names == ("0", "2")
    assert reports[6].measurement.update_norm is not None  # the snapshot was taken with the new layout
