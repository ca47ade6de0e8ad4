"""The rules of gradient monitoring over a training run, per optimizer, without a Trainer.

:class:`GradientTracker` owns what :class:`~gradwatch.callbacks.GradientMonitor` used to decide inside its hooks, so
each rule can be tested with a plain PyTorch loop:

- **cadence** per optimizer, in that optimizer's own steps (a GAN generator stepping once per five critic steps,
  manual accumulation stepping every other batch), always measuring its first step;
- **layer discovery** refreshed whenever the optimizer's trainable parameters or param groups change (fine-tuning
  unfreezes a backbone, ``BaseFinetuning`` adds a param group); each parameter counts once (tied weights);
- **forward order** read off the autograd graph only when a layout needs it;
- **history** of per-layer gradient norms for the heatmap, by layer name, in bounded memory;
- **streaks and actions**: which verdicts are new, skipped steps in a row, when a skip becomes a stop;
- **GradScaler skips** (fp16): steps the scaler skips while it calibrates are counted, not called non-finite.

It never talks to a logger; :meth:`GradientTracker.metrics` says what to log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.errors import ConfigError, unknown_choice
from gradwatch.health.distributed import Sharding, check_measurable, unsharded_aliases
from gradwatch.health.layers import check_patterns, find_layers, forward_order
from gradwatch.health.stats import GradientStatistics, Measurement
from gradwatch.health.verdicts import Finding, HealthDetector, StallDetector, Verdict
from gradwatch.rundir import (
    ATTENUATION,
    CLIP_NORM,
    CLIP_RATE,
    GRAD_NONFINITE,
    GRAD_NORM,
    GRAD_NORM_TOTAL,
    PARAM_NORM,
    SCALER_SKIPS,
    UPDATE_RATIO,
    verdict_key,
)

#: What each verdict may trigger; ``skip`` (skip the optimizer step) only makes sense for non-finite gradients.
ACTIONS = ("warn", "alert", "stop", "raise")
NONFINITE_ACTIONS = (*ACTIONS, "skip")

#: Most measurements the gradient-flow heatmap keeps (it thins itself beyond, so checkpoints stay small).
HISTORY = 1000
#: Graphs in a row a trainable parameter may be missing from before it is taken for unused: enough for a WGAN's
#: five critic passes before the generator's first (when the user does not toggle optimizers).
MISS_LIMIT = 8


@dataclass(frozen=True)
class TrackerConfig:
    """What to measure and how to act on it; validated when made.

    Args:
        every: Measure every this many steps of each optimizer (its own steps), and always its first.
        include: fnmatch patterns of module paths to watch (all modules owning parameters when empty).
        exclude: fnmatch patterns of module paths never watched.
        group_depth: Merge modules sharing the first ``group_depth`` path components into one layer.
        update_ratio: Also measure update-to-parameter ratios (a parameter snapshot one step before).
        histograms: Also count log10 |grad| histograms per layer.
        nonfinite_guard: Check every step for non-finite gradients, not only measured ones.
        actions: Verdict → ``warn``, ``alert``, ``stop``, ``raise`` (or ``skip`` for non-finite gradients).
        max_skips: Consecutive steps ``skip`` may skip before it stops.
        thresholds: :class:`~gradwatch.health.HealthDetector`'s keyword arguments.
        stall_window: Optimizer steps per window of the ``stalled`` verdict (:class:`~gradwatch.health.StallDetector`:
            the mean training loss compared window to window), at least two measurements' worth (``2 * every``);
            ``None`` never judges a stall. Judged only for a model with one optimizer: adversarial losses (a GAN's)
            do not fall as training progresses.

    Raises:
        ConfigError: a bad value; ``param`` names the argument.
    """

    every: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    group_depth: int | None = None
    update_ratio: bool = True
    histograms: bool = False
    nonfinite_guard: bool = False
    actions: Mapping[Verdict, str] = field(default_factory=lambda: dict.fromkeys(Verdict, "warn"))
    max_skips: int = 3
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    stall_window: int | None = 40

    def __post_init__(self) -> None:
        counts = {"every": self.every, "group_depth": self.group_depth, "stall_window": self.stall_window}
        for param, value in counts.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{param} must be an int >= 1, got {value!r}", param=param)
        if self.max_skips < 0:
            raise ConfigError(f"max_skips must be >= 0, got {self.max_skips}", param="max_skips")
        object.__setattr__(self, "include", check_patterns(self.include, owner="GradientTracker", param="include"))
        object.__setattr__(self, "exclude", check_patterns(self.exclude, owner="GradientTracker", param="exclude"))
        actions = {**dict.fromkeys(Verdict, "warn"), **{Verdict(k): v for k, v in self.actions.items()}}
        for verdict, action in actions.items():
            choices = NONFINITE_ACTIONS if verdict is Verdict.NONFINITE else ACTIONS
            if action not in choices:
                param = f"on_{verdict.value}"
                raise ConfigError(f"{param}: " + unknown_choice("action", action, choices), param=param)
        object.__setattr__(self, "actions", actions)
        try:
            HealthDetector(**self.thresholds)
        except (TypeError, ValueError) as err:
            param = str(err).split(" ", 1)[0]
            raise ConfigError(str(err), param=param if param.isidentifier() else None) from err
        if actions[Verdict.NONFINITE] == "skip":  # skipping needs every step checked
            object.__setattr__(self, "nonfinite_guard", True)


@dataclass(frozen=True)
class Action:
    """What to do about one finding now.

    Attributes:
        finding: The verdict and its layers.
        action: ``warn``, ``alert``, ``stop``, ``raise`` or ``skip``.
        note: What the action did beyond the finding (``optimizer step skipped, 1 of 3``).
    """

    finding: Finding
    action: str
    note: str = ""


@dataclass
class Report:
    """One measurement of one optimizer's layers and what follows from it.

    Attributes:
        group: The optimizer's tracked group.
        step: The step it is logged under.
        measurement: The statistics.
        updates: Optimizer steps this optimizer had taken before this one (0: nothing has been updated yet).
        actions: What to do now, in the order of the findings.
        drop_gradients: Whether the gradients must not reach the weights (non-finite under skip, stop, raise).
        scaler_skips: Steps the GradScaler skipped since the previous measurement, this one included (``None``
            without a scaler).
        layout_changed: Whether the watched layers changed since the previous measurement (or this is the first).
    """

    group: TrackedGroup
    step: int
    measurement: Measurement
    updates: int
    actions: list[Action] = field(default_factory=list)
    drop_gradients: bool = False
    scaler_skips: int | None = None
    layout_changed: bool = False

    @property
    def stop(self) -> Action | None:
        """The first action that stops training, if any."""
        return next((a for a in self.actions if a.action in ("stop", "raise")), None)


@dataclass
class TrackedGroup:
    """One optimizer's layers, detector, history and counters.

    Attributes:
        name: ``""`` for a single optimizer; else the network it trains (``generator``) or ``optimizer<i>``.
        stats: The statistics of its current layers (``None`` before its first step).
        findings: The verdicts that stand after its latest measurement.
        steps: The logged steps of its measurements (thinned past :data:`HISTORY`).
        history: Layer name → gradient norm at each of ``steps`` (NaN where it was not measured).
        order: Every layer name it has had, input side first (the heatmap's rows).
        optimizer_steps: Steps the optimizer has taken (its cadence counter).
    """

    name: str
    detector: HealthDetector
    optimizer: torch.optim.Optimizer | None = None
    stats: GradientStatistics | None = None
    findings: list[Finding] = field(default_factory=list)
    active: set[Verdict] = field(default_factory=set)
    steps: list[int] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    optimizer_steps: int = 0
    measured: int = 0
    clipped: int = 0
    skips: int = 0
    magnitudes: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None
    signature: tuple[int, ...] | None = None
    found_inf: list[torch.Tensor] = field(default_factory=list)
    reorder: bool = False
    layout_changed: bool = False
    stall: StallDetector | None = None
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The current layers, input side first."""
        return self.stats.names if self.stats is not None else ()

    @property
    def suffix(self) -> str:
        """``/<name>`` for the per-network keys of several optimizers (``grad/norm_total/generator``)."""
        return f"/{self.name}" if self.name else ""

    def record(self, step: int, m: Measurement) -> None:
        """Add a measurement to the heatmap's history; past :data:`HISTORY` columns, keep every other one."""
        for name in m.names:
            self.history.setdefault(name, [float("nan")] * len(self.steps))
        self.steps.append(step)
        values = dict(zip(m.names, m.grad_norm.tolist(), strict=True))
        for name, column in self.history.items():
            column.append(values.get(name, float("nan")))
        if len(self.steps) > HISTORY:  # the heatmap spans the whole run at a coarser step, in bounded memory
            self.steps = self.steps[::2]
            self.history = {name: column[::2] for name, column in self.history.items()}

    def heatmap(self) -> tuple[list[str], np.ndarray]:
        """Layer names (input side first) and their gradient norms, ``(layers, measurements)``."""
        names = [name for name in self.order if name in self.history]
        return names, np.array([self.history[name] for name in names], dtype=np.float64).reshape(len(names), -1)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on."""
        return {
            "detector": self.detector.state_dict(),
            "active": sorted(v.value for v in self.active),
            "order": self.order,
            "steps": self.steps,
            "history": self.history,
            "optimizer_steps": self.optimizer_steps,
            "measured": self.measured,
            "clipped": self.clipped,
            "skips": self.skips,
            **({"stall": self.stall.state_dict()} if self.stall is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (also the layout of checkpoints before 0.2)."""
        self.detector.load_state_dict(state["detector"])
        self.active = {Verdict(v) for v in state["active"]}
        self.steps = list(state["steps"])
        history = state["history"]
        if isinstance(history, list):  # checkpoints before 0.2: one row per measurement, in the layers' order
            names = state.get("names") or []
            history = {name: [row[i] for row in history] for i, name in enumerate(names)}
        self.history = {name: list(column) for name, column in history.items()}
        self.order = list(state.get("order") or state.get("names") or self.history)
        self.measured, self.clipped, self.skips = state["measured"], state["clipped"], state["skips"]
        if self.stall is not None and "stall" in state:
            self.stall.load_state_dict(state["stall"])
        # Older checkpoints counted the trainer's logged steps, which equal the optimizer's own under automatic
        # optimization: the next step after the last measured one.
        self.optimizer_steps = state.get("optimizer_steps", self.steps[-1] + 1 if self.steps else 0)


class GradientTracker:
    """Per-optimizer gradient health of one model over a training run, fed from a training loop's hooks.

    Call :meth:`watch` once per optimizer, :meth:`observe` with each loss before its backward pass, and
    :meth:`step` after the backward pass and before each ``optimizer.step()``; :meth:`step` returns a
    :class:`Report` when it measured. In a plain loop::

        tracker = GradientTracker(model, TrackerConfig(every=10))
        tracker.watch(optimizer)
        for x, y in data:
            loss = loss_fn(model(x), y)
            tracker.observe(loss)
            loss.backward()
            report = tracker.step(optimizer, step=step)
            if report and report.drop_gradients: ...
            optimizer.step()

    Args:
        model: The model whose modules own the optimizers' parameters.
        config: What to measure and how to act on it.
        scaler: A ``torch.amp.GradScaler`` that may skip steps (fp16): its skips are counted, and non-finite
            gradients are a verdict only once its scale has fallen to 1 or below (it can do no more).
        root: The outermost module training runs, when a wrapper holds ``model`` from outside (Lightning's
            ``trainer.strategy.model`` under FSDP1): where FSDP1's sharding is looked up. ``model`` by default.
        chance_loss: The training loss of a model that learned nothing (``ln(classes)`` for cross-entropy), which
            the ``stalled`` verdict measures progress against; without it, against the first loss.

    Example::

        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> tracker = GradientTracker(model, TrackerConfig(every=2))
        >>> _ = tracker.watch(optimizer)
        >>> measured = []
        >>> for step in range(4):
        ...     loss = model(torch.randn(8, 4)).pow(2).mean()
        ...     tracker.observe(loss)
        ...     loss.backward()
        ...     measured.append(tracker.step(optimizer, step=step) is not None)
        ...     optimizer.step()
        ...     optimizer.zero_grad()
        >>> measured, tracker.groups[0].names
        ([True, False, True, False], ('0', '2'))
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrackerConfig | None = None,
        *,
        scaler: Any = None,
        root: nn.Module | None = None,
        chance_loss: float | None = None,
    ) -> None:
        self.model = model
        self.chance_loss = chance_loss
        self.config = config or TrackerConfig()
        self.scaler = scaler
        self.root = root if root is not None else model
        self._groups: dict[int, TrackedGroup] = {}
        self._order: dict[int, tuple[int, int]] = {}
        # Parameters whose place in the forward order is unknown, and the graphs read without finding them.
        self._wanted: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
        self._misses: dict[int, int] = {}

    @property
    def groups(self) -> list[TrackedGroup]:
        """The tracked optimizers' groups, in the order they were watched."""
        return list(self._groups.values())

    @property
    def findings(self) -> list[Finding]:
        """The verdicts that stand after the latest measurements, over all optimizers."""
        return [finding for group in self._groups.values() for finding in group.findings]

    def watch(self, optimizer: torch.optim.Optimizer, name: str = "") -> TrackedGroup:
        """Track ``optimizer``'s parameters as one group, named ``name`` in metric keys and messages.

        Raises:
            ConfigError: parameters that cannot be measured per layer (FSDP1 flat parameters) or whole (DTensors on
                several meshes, partial placements, FSDP1 hybrid sharding).
        """
        params = [p for g in optimizer.param_groups for p in g["params"]]
        check_measurable(params)
        Sharding.of(params, self.root)  # a layout that cannot be measured whole fails here, before training
        group = TrackedGroup(name, HealthDetector(**self.config.thresholds), optimizer=optimizer)
        self._groups[id(optimizer)] = group
        window = self.config.stall_window
        for each in self._groups.values():  # a second optimizer: a game (a GAN), whose losses need not fall
            span = max(window or 0, 2 * self.config.every)
            each.stall = StallDetector(span, chance=self.chance_loss) if window and len(self._groups) == 1 else None
        return group

    def layers_of(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        """The layers :meth:`step` would watch for ``optimizer`` now (its trainable parameters)."""
        return self._find(_trainable(optimizer))

    def _find(self, params: Sequence[nn.Parameter]) -> list[Any]:
        c = self.config
        return find_layers(
            self.model, params, include=c.include, exclude=c.exclude, group_depth=c.group_depth, order=self._order
        )

    def observe(self, loss: torch.Tensor, *, scale: float | torch.Tensor = 1.0) -> None:
        """Keep ``loss`` for the ``stalled`` verdict; read the forward order off its graph while needed.

        The loss is added on its device (no sync) and read at the next measurement, in its one transfer. The graph
        is read while a trainable parameter's place in it is unknown: the first passes, and the first pass after a
        layer is unfrozen; otherwise nothing but a check of those parameters.

        Args:
            loss: The loss about to be backpropagated.
            scale: What makes it the batch's loss again (Lightning divides it by ``accumulate_grad_batches`` and,
                in fp16, multiplies it by the GradScaler's scale); a tensor on the loss's device is not read.

        Each graph read replaces what earlier ones said of the parameters it holds, so the layers of a group are
        ordered by one pass. A trainable parameter that :data:`MISS_LIMIT` graphs in a row did not use is taken
        for unused and no longer looked for.
        """
        # Judged for one optimizer only (see `watch`): its group sums the losses in place until it measures.
        group = next(iter(self._groups.values())) if len(self._groups) == 1 else None
        if group is not None and group.stall is not None:
            value = loss.detach().float()
            value = value * scale if isinstance(scale, torch.Tensor) or scale != 1 else value
            if group.loss_sum is None:
                group.loss_sum = value.clone()  # `detach` shares the loss's memory: never add into it
            else:
                group.loss_sum.add_(value)
            group.loss_count += 1
        live = [key for key, p in self._wanted.items() if p.requires_grad]
        if not live:
            return
        found = forward_order(loss, unsharded_aliases(self.model))
        if not found:
            return
        self._order.update(found)
        for key in live:
            if key in found:
                del self._wanted[key]
                self._misses.pop(key, None)
            else:
                self._misses[key] = self._misses.get(key, 0) + 1
                if self._misses[key] >= MISS_LIMIT:
                    del self._wanted[key]
        if len(live) > sum(key in self._wanted for key in live):
            for group in self._groups.values():
                group.reorder = group.stats is not None

    def step(self, optimizer: torch.optim.Optimizer, *, step: int, clip: float | None = None) -> Report | None:
        """Account for one step of ``optimizer``; measure when it is due (or non-finite under the guard).

        Args:
            optimizer: The optimizer about to step (its gradients are final: accumulated, unscaled, unclipped).
            step: The step to log under.
            clip: The gradient-norm clipping threshold in use, if any (counts clipped steps).

        Returns:
            The report of the measurement, or ``None`` when nothing was measured.
        """
        group = self._groups.get(id(optimizer))
        if group is None:  # an optimizer created after tracking started; nothing to compare it with
            return None
        own = group.optimizer_steps
        group.optimizer_steps += 1
        if self.scaler is not None:
            group.found_inf.extend(_found_inf(self.scaler, optimizer))
        every = self.config.every
        due = own % every == 0
        snapshot = self.config.update_ratio and (own + 1) % every == 0
        if not (due or snapshot or self.config.nonfinite_guard):
            return None
        self._refresh(group)
        if group.stats is None:  # nothing to measure (every layer frozen): nothing to keep for a measurement
            group.found_inf.clear()
            return None
        report = None
        if due:
            report = self._measure(group, step, own, clip)
        elif self.config.nonfinite_guard:
            if group.stats.finite():
                group.skips = 0  # a finite step ends a run of skipped ones
            else:
                group.stats.discard_snapshot()
                report = self._measure(group, step, own, clip)
        if snapshot:
            group.stats.snapshot()
        return report

    def _refresh(self, group: TrackedGroup) -> None:
        """Lay the group's layers out again if its trainable parameters changed (or their order became known)."""
        assert group.optimizer is not None
        params = _trainable(group.optimizer)
        signature = (len(group.optimizer.param_groups), *map(id, params))
        if signature == group.signature and not group.reorder:
            return
        if signature != group.signature:  # parameters added to the optimizer later are looked for in the graph
            self._wanted.update((id(p), p) for p in params if id(p) not in self._order)
        group.signature, group.reorder = signature, False
        layers = self._find(params)
        flat = [p for layer in layers for p in layer.params]
        if group.stats is not None and (group.stats.names, list(map(id, group.stats.params))) == (
            tuple(layer.name for layer in layers),
            list(map(id, flat)),
        ):
            return
        group.layout_changed = True
        if not layers:
            group.stats = None
            return
        group.stats = GradientStatistics(
            layers, histograms=self.config.histograms, sharding=Sharding.of(flat, self.root)
        )
        group.order = _merge_order(group.order, list(group.stats.names))

    def _measure(self, group: TrackedGroup, step: int, own: int, clip: float | None) -> Report:
        assert group.stats is not None
        found_inf, group.found_inf = group.found_inf, []
        extra = [torch.stack([f.float().reshape(()) for f in found_inf]).sum()] if found_inf else []
        if group.loss_sum is not None:  # the mean training loss since the last measurement, in the same transfer
            extra.append(group.loss_sum / max(group.loss_count, 1))
        m = group.stats.measure(extra)
        mean_loss = m.extra[-1] if group.loss_sum is not None else None
        group.loss_sum, group.loss_count = None, 0
        findings = group.detector.update(m)
        group.measured += 1
        group.record(step, m)
        if clip and m.total_norm > clip:
            group.clipped += 1
        report = Report(group, step, m, updates=own, layout_changed=group.layout_changed)
        group.layout_changed = False
        if self.scaler is not None:
            report.scaler_skips = round(m.extra[0]) if found_inf else 0
        verdicts = {f.verdict for f in findings}
        if Verdict.NONFINITE in verdicts and self._scaler_calibrating():
            verdicts.discard(Verdict.NONFINITE)  # the scaler skips this step and lowers its scale: its normal work
        stalled = group.stall.update(own, mean_loss) if group.stall is not None and mean_loss is not None else None
        if stalled is not None and not verdicts:  # a stall while gradients flow; else the gradients explain it
            findings.append(Finding(Verdict.STALLED, (), stalled, len(m.names)))  # the network, not some layers
            verdicts.add(Verdict.STALLED)
        group.findings = [f for f in findings if f.verdict in verdicts]
        new, group.active = verdicts - group.active, verdicts
        if Verdict.NONFINITE not in verdicts:
            group.skips = 0
        self._decide(group, report, new)
        return report

    def _scaler_calibrating(self) -> bool:
        """Whether a GradScaler will skip this step and can still lower its scale (a sync: non-finite steps only)."""
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: True)():
            return False
        return float(self.scaler.get_scale()) > 1.0

    def _decide(self, group: TrackedGroup, report: Report, new: set[Verdict]) -> None:
        for finding in group.findings:
            action = self.config.actions[finding.verdict]
            if finding.verdict is Verdict.NONFINITE and action in ("skip", "stop", "raise"):
                report.drop_gradients = True
            if action == "skip":
                group.skips += 1
                if group.skips > self.config.max_skips:
                    report.actions.append(Action(finding, "stop", f"{self.config.max_skips} steps skipped in a row"))
                else:
                    note = f"optimizer step skipped, {group.skips} of {self.config.max_skips}"
                    report.actions.append(Action(finding, "skip", note))
            elif action in ("stop", "raise") or finding.verdict in new:
                report.actions.append(Action(finding, action))

    def keep_magnitudes(self, optimizer: torch.optim.Optimizer) -> None:
        """Read mean and max |grad| per layer now, for gradient-flow bars drawn after the gradients are freed.

        Under sharding this is a collective: call it on every process at the same step.
        """
        group = self._groups.get(id(optimizer))
        if group is not None and group.stats is not None:
            group.magnitudes = (group.stats.names, *group.stats.magnitudes())

    def metrics(self, report: Report, *, clip: float | None = None) -> dict[str, float]:
        """What to log for ``report``.

        Per-layer ``grad/`` and ``param/`` keys, the group's totals, and the layer counts of every verdict standing
        in any group (``health/<verdict>``).
        """
        m, suffix = report.measurement, report.group.suffix
        metrics: dict[str, float] = {}
        ratio = m.update_ratio
        for i, name in enumerate(m.names):
            if m.measured[i]:
                metrics[GRAD_NORM + name] = m.grad_norm[i]
                if ratio is not None:
                    metrics[UPDATE_RATIO + name] = ratio[i]
            metrics[PARAM_NORM + name] = m.param_norm[i]
            if m.nonfinite[i]:
                metrics[GRAD_NONFINITE + name] = m.nonfinite[i]
        metrics[GRAD_NORM_TOTAL + suffix] = m.total_norm
        if m.attenuation is not None:
            metrics[ATTENUATION + suffix] = m.attenuation
        if clip:
            metrics[CLIP_NORM + suffix] = clip
            metrics[CLIP_RATE + suffix] = report.group.clipped / report.group.measured
        if report.scaler_skips is not None:
            metrics[SCALER_SKIPS + suffix] = report.scaler_skips
        findings = self.findings
        for verdict in Verdict:  # layers named; a stall names the network: 1 while it stands
            metrics[verdict_key(verdict.value)] = sum(len(f.layers) or 1 for f in findings if f.verdict is verdict)
        return {key: float(value) for key, value in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        """Every group's counters and history, by group name."""
        return {group.name: group.state_dict() for group in self._groups.values()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into the groups watched under the same names."""
        for group in self._groups.values():
            if group.name in state:
                group.load_state_dict(state[group.name])


def _trainable(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    # Lightning's toggle_optimizer freezes the *other* optimizers' parameters; an optimizer's own are as the user
    # left them when it steps.
    return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]


def _found_inf(scaler: Any, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The GradScaler's per-device "found inf" flags for this step of ``optimizer`` (set by ``unscale_``).

    References only, no kernel: they are summed at the next measurement, in its one transfer. The flags live in
    the scaler's per-optimizer state, which ``GradScaler.step`` itself reads; without it nothing is counted.
    """
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
    return list(state.get("found_inf_per_device", {}).values())


def _merge_order(old: list[str], new: list[str]) -> list[str]:
    """``new``'s layers in its order, with each layer only ``old`` has placed after its predecessor there."""
    merged = list(new)
    for i, name in enumerate(old):
        if name in merged:
            continue
        before = next((old[j] for j in range(i - 1, -1, -1) if old[j] in merged), None)
        merged.insert(merged.index(before) + 1 if before is not None else 0, name)
    return merged
