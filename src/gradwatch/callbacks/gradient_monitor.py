"""``GradientMonitor``: per-layer gradient statistics and health verdicts, wired to Lightning's hooks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from gradwatch.callbacks.publish import log_histograms, log_images, log_metrics, log_wandb_bars, logging_step
from gradwatch.errors import ConfigError, unknown_choice
from gradwatch.health import Finding, GradientStatistics, HealthDetector, Measurement, Verdict, advise
from gradwatch.health.layers import check_patterns, find_layers, graph_depths
from gradwatch.sweep.metrics import LAYERS_KEY

#: What each verdict may trigger; ``skip`` (skip the optimizer step) only makes sense for non-finite gradients.
ACTIONS = ("warn", "alert", "stop", "raise")
NONFINITE_ACTIONS = (*ACTIONS, "skip")

#: Most measurements the gradient-flow heatmap keeps (it thins itself beyond, so checkpoints stay small).
HISTORY = 1000

# Verdicts are one line each on stderr (logging's last-resort handler when the user configured none), not warnings,
# which would print the source line under them.
log = logging.getLogger("gradwatch")


class GradientHealthError(RuntimeError):
    """Raised by :class:`GradientMonitor` when a verdict's action is ``raise``."""


@dataclass
class _Group:
    """One optimizer's parameters: their layers, detector, latest findings and history."""

    name: str
    detector: HealthDetector
    stats: GradientStatistics | None = None
    findings: list[Finding] = field(default_factory=list)
    active: set[Verdict] = field(default_factory=set)
    steps: list[int] = field(default_factory=list)
    history: list[list[float]] = field(default_factory=list)
    measured: int = 0
    clipped: int = 0
    skips: int = 0
    nonfinite_streak: int = 0
    snapshot_step: int | None = None
    magnitudes: tuple[np.ndarray, np.ndarray] | None = None

    def record(self, step: int, grad_norm: np.ndarray) -> None:
        """Add a measurement to the heatmap's history; past :data:`HISTORY` columns, keep every other one."""
        self.steps.append(step)
        self.history.append([float(x) for x in grad_norm])
        if len(self.steps) > HISTORY:  # the heatmap spans the whole run at a coarser step, in bounded memory
            self.steps, self.history = self.steps[::2], self.history[::2]

    def suffix(self) -> str:
        return f"/{self.name}" if self.name else ""

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict(),
            "active": sorted(v.value for v in self.active),
            "names": list(self.stats.names) if self.stats else None,
            "steps": self.steps,
            "history": self.history,
            "measured": self.measured,
            "clipped": self.clipped,
            "skips": self.skips,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.active = {Verdict(v) for v in state["active"]}
        self.steps, self.history = list(state["steps"]), [list(row) for row in state["history"]]
        self.measured, self.clipped, self.skips = state["measured"], state["clipped"], state["skips"]


class GradientMonitor(Callback):
    r"""Per-layer gradient statistics and verdicts on vanishing, exploding and non-finite gradients.

    Measures at ``on_before_optimizer_step`` (after gradient accumulation and AMP unscaling, before clipping),
    every ``log_every_n_steps`` optimizer steps and always at the first: per layer (module owning parameters,
    ordered input → output) the gradient norm ``grad/norm/<layer>``, the parameter norm ``param/norm/<layer>``
    and the update-to-parameter ratio ``grad/update_ratio/<layer>`` (the last update, whatever the optimizer),
    and the total ``grad/norm_total``. Statistics are computed on the device with fused ``torch._foreach_*`` ops
    and copied to the host once per logging step; other steps do nothing (unless ``nonfinite_guard``).

    Verdicts (:class:`~gradwatch.health.Verdict`) are logged as layer counts ``health/vanishing``,
    ``health/exploding`` and ``health/nonfinite``, with ``health/attenuation`` (log10 of the first layer's
    gradient norm over the last's), through every logger and in ``trainer.callback_metrics``, so
    ``EarlyStopping(monitor="health/exploding", mode="min", divergence_threshold=0.5)`` stops on explosions.
    When a verdict appears, its action runs with one line naming the layers, the likely cause and a remedy drawn
    from the model's configuration.

    Under manual optimization each optimizer is measured at its own step (a GAN's generator and discriminator
    separately; totals then carry the network's name, ``grad/norm_total/generator``). Under DDP the gradients
    are already averaged, so every process computes the same statistics and only rank 0 logs them.

    Args:
        log_every_n_steps: Measure every this many optimizer steps; the Trainer's ``log_every_n_steps`` when
            ``None``.
        include: fnmatch patterns of module paths to watch (all modules owning parameters when empty).
        exclude: fnmatch patterns of module paths never watched.
        group_depth: Merge modules sharing the first ``group_depth`` path components into one layer (one entry
            per block of a very deep model).
        update_ratio: Also measure update-to-parameter ratios: the parameters are copied one optimizer step
            before each measurement, into a buffer kept for the run (one copy of the watched parameters), and the
            ratio logged at a step is that of the update made at the step before it.
        histograms: Also log log10 |grad| histograms per layer (``grad/hist/<layer>``) to W&B and TensorBoard;
            the leftmost bucket counts exact zeros.
        vanishing_norm: A layer's gradient norm under this is vanishing.
        max_attenuation: Orders of magnitude the first layer's gradient norm may be below the last layer's.
        exploding_norm: A layer's gradient norm over this is exploding.
        max_growth: Growth factor of the total norm between two measurements that counts as exploding.
        patience: Measurements in a row a vanishing gradient must persist before it is a verdict.
        on_vanishing: ``warn``, ``alert`` (``wandb.alert``, rate-limited, and a warning), ``stop`` (a graceful
            stop agreed by all processes) or ``raise`` (:class:`GradientHealthError`).
        on_exploding: Likewise.
        on_nonfinite: Likewise, or ``skip``: drop the step's gradients so the optimizer step changes nothing, at
            most ``max_skips`` times in a row, then stop. ``skip``, ``stop`` and ``raise`` keep the non-finite
            gradients out of the weights.
        max_skips: Consecutive steps ``skip`` may skip.
        nonfinite_guard: Check every step for non-finite gradients (one fused norm and one scalar copy per step),
            not only logging steps. On with ``on_nonfinite="skip"``.
        flow_every_n_epochs: Log gradient-flow images (per-layer mean / max |grad| bars, and a layer × step
            heatmap of gradient norms) every this many epochs and at the end of fit; ``0``: only at the end;
            ``None``: never.
        alert_interval: Seconds between two W&B alerts with the same title.

    Raises:
        ConfigError: a bad argument; the message names it and the valid values.

    Example::

        >>> import lightning.pytorch as pl
        >>> monitor = GradientMonitor(log_every_n_steps=10, on_exploding="stop", on_nonfinite="skip")
        >>> trainer = pl.Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        group_depth: int | None = None,
        update_ratio: bool = True,
        histograms: bool = False,
        vanishing_norm: float = 1e-8,
        max_attenuation: float = 4.0,
        exploding_norm: float = 1e3,
        max_growth: float = 100.0,
        patience: int = 3,
        on_vanishing: str = "warn",
        on_exploding: str = "warn",
        on_nonfinite: str = "warn",
        max_skips: int = 3,
        nonfinite_guard: bool = False,
        flow_every_n_epochs: int | None = 10,
        alert_interval: float = 600.0,
    ) -> None:
        for param, value in {"log_every_n_steps": log_every_n_steps, "group_depth": group_depth}.items():
            if value is not None and value < 1:
                raise ConfigError(f"GradientMonitor: {param} must be >= 1 or None, got {value}", param=param)
        for param, value in {"max_skips": max_skips, "flow_every_n_epochs": flow_every_n_epochs or 0}.items():
            if value < 0:
                raise ConfigError(f"GradientMonitor: {param} must be >= 0, got {value}", param=param)
        for param, value, choices in (
            ("on_vanishing", on_vanishing, ACTIONS),
            ("on_exploding", on_exploding, ACTIONS),
            ("on_nonfinite", on_nonfinite, NONFINITE_ACTIONS),
        ):
            if value not in choices:
                raise ConfigError(f"GradientMonitor: {param}: " + unknown_choice("action", value, choices), param=param)
        self.include = check_patterns(include, owner="GradientMonitor", param="include")
        self.exclude = check_patterns(exclude, owner="GradientMonitor", param="exclude")
        try:
            self._detector_args = {
                "vanishing_norm": vanishing_norm,
                "max_attenuation": max_attenuation,
                "exploding_norm": exploding_norm,
                "max_growth": max_growth,
                "patience": patience,
            }
            HealthDetector(**self._detector_args)
        except ValueError as err:
            param = str(err).split(" ", 1)[0]
            raise ConfigError(f"GradientMonitor: {err}", param=param if param.isidentifier() else None) from err
        self.log_every_n_steps = log_every_n_steps
        self.group_depth = group_depth
        self.update_ratio = update_ratio
        self.histograms = histograms
        self.actions = {
            Verdict.VANISHING: on_vanishing,
            Verdict.EXPLODING: on_exploding,
            Verdict.NONFINITE: on_nonfinite,
        }
        self.max_skips = max_skips
        self.nonfinite_guard = nonfinite_guard or on_nonfinite == "skip"
        self.flow_every_n_epochs = flow_every_n_epochs
        self.alert_interval = alert_interval
        #: Why the monitor stopped training, if it did.
        self.stopped_reason: str | None = None
        self._groups: dict[int, _Group] = {}
        self._depths: dict[int, tuple[int, int]] = {}
        self._every = 1
        self._loaded: dict[str, Any] | None = None
        self._flow_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps,
            include=self.include,
            exclude=self.exclude,
            group_depth=self.group_depth,
        )

    @property
    def findings(self) -> list[Finding]:
        """The verdicts of the latest measurements, over all optimizers."""
        return [finding for group in self._groups.values() for finding in group.findings]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        self._groups, self._depths, self._flow_step = {}, {}, None
        names = _optimizer_names(pl_module, trainer.optimizers)
        for optimizer, name in zip(trainer.optimizers, names, strict=True):
            self._groups[id(optimizer)] = _Group(name, HealthDetector(**self._detector_args))
        if not any(self._layers(pl_module, opt) for opt in trainer.optimizers):
            raise ConfigError(
                f"GradientMonitor: no module with trainable parameters matches include={list(self.include)}"
                f" exclude={list(self.exclude)}",
                param="include" if self.include else "exclude",
            )
        if self._loaded is not None:
            for group in self._groups.values():
                if group.name in self._loaded["groups"]:
                    group.load_state_dict(self._loaded["groups"][group.name])
            self.stopped_reason = self._loaded["stopped_reason"]
            self._loaded = None

    def _layers(self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> list[Any]:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        return find_layers(
            pl_module,
            params,
            include=self.include,
            exclude=self.exclude,
            group_depth=self.group_depth,
            depths=self._depths,
        )

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # Until every optimizer's layers are laid out, read the forward order off the autograd graph (once per
        # backward, no hooks).
        if any(group.stats is None for group in self._groups.values()):
            self._depths.update(graph_depths(loss))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        group = self._groups.get(id(optimizer))
        if group is None:  # an optimizer created after fit started; nothing to compare it with
            return
        if group.stats is None:
            group.stats = GradientStatistics(self._layers(pl_module, optimizer), histograms=self.histograms)
            self._log_layer_order(trainer)
        step = logging_step(trainer)
        if step % self._every == 0 or group.measured == 0:
            if group.snapshot_step is not None and group.snapshot_step != step - 1:
                group.stats.discard_snapshot()  # an update over several steps would not compare
            self._measure(trainer, pl_module, group, optimizer, step)
        elif self.nonfinite_guard and not group.stats.finite():
            group.stats.discard_snapshot()
            self._measure(trainer, pl_module, group, optimizer, step)
        group.snapshot_step = None
        if self._flow_due(trainer):
            # Read now: Lightning frees the gradients before validation, so they are gone at the epoch's end.
            group.magnitudes = group.stats.magnitudes()
        if self.update_ratio and (step + 1) % self._every == 0:
            group.stats.snapshot()
            group.snapshot_step = step

    def _log_layer_order(self, trainer: pl.Trainer) -> None:
        """Log the layers, input → output, as the hyperparameter :data:`LAYERS_KEY` of every logger.

        Metric keys cannot carry the order (CSV headers are sorted, W&B panels list keys alphabetically), and
        reports and dashboards draw layers in it. A GAN's groups follow each other as they are laid out.
        """
        names = [name for group in self._groups.values() if group.stats is not None for name in group.stats.names]
        for logger in trainer.loggers:
            logger.log_hyperparams({LAYERS_KEY: names})

    def _measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        group: _Group,
        optimizer: torch.optim.Optimizer,
        step: int,
    ) -> None:
        assert group.stats is not None
        m = group.stats.measure()
        group.findings = group.detector.update(m)
        group.measured += 1
        group.record(step, m.grad_norm)
        # Lightning clips by norm when no algorithm is given.
        clip = trainer.gradient_clip_val if trainer.gradient_clip_algorithm in (None, "norm") else None
        if clip and m.total_norm > clip:
            group.clipped += 1
        metrics = self._metrics(group, m, clip)
        log_metrics(trainer, metrics)
        if self.histograms and m.histograms is not None:
            log_histograms(trainer, {f"grad/hist/{name}": m.histograms[i] for i, name in enumerate(m.names)})
        self._act(trainer, pl_module, group, optimizer)

    def _metrics(self, group: _Group, m: Measurement, clip: float | None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        ratio = m.update_ratio
        for i, name in enumerate(m.names):
            if m.measured[i]:
                metrics[f"grad/norm/{name}"] = m.grad_norm[i]
                if ratio is not None:
                    metrics[f"grad/update_ratio/{name}"] = ratio[i]
            metrics[f"param/norm/{name}"] = m.param_norm[i]
            if m.nonfinite[i]:
                metrics[f"grad/nonfinite/{name}"] = m.nonfinite[i]
        suffix = group.suffix()
        metrics[f"grad/norm_total{suffix}"] = m.total_norm
        if m.attenuation is not None:
            metrics[f"health/attenuation{suffix}"] = m.attenuation
        if clip:
            metrics[f"grad/clip_norm{suffix}"] = clip
            metrics[f"grad/clip_rate{suffix}"] = group.clipped / group.measured
        findings = self.findings
        for verdict in Verdict:
            metrics[f"health/{verdict.value}"] = sum(len(f.layers) for f in findings if f.verdict is verdict)
        return {key: float(value) for key, value in metrics.items()}

    def _act(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, group: _Group, optimizer: torch.optim.Optimizer
    ) -> None:
        verdicts = {f.verdict for f in group.findings}
        nonfinite = Verdict.NONFINITE in verdicts
        group.nonfinite_streak = group.nonfinite_streak + 1 if nonfinite else 0
        if not nonfinite:
            group.skips = 0
        # Under fp16 AMP, the GradScaler skips steps with overflowed gradients and lowers its scale: that is its
        # normal calibration, so only non-finite gradients that persist are a verdict.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if nonfinite and scaler is not None and group.nonfinite_streak < group.detector.patience:
            verdicts.discard(Verdict.NONFINITE)
        new = verdicts - group.active
        group.active = verdicts
        if self.flow_every_n_epochs is not None and any(self.actions[v] == "stop" for v in verdicts):
            group.magnitudes = group.stats.magnitudes()  # this may be the last step: keep the flow bars' data
        stop_reason = None
        for finding in group.findings:
            if finding.verdict not in verdicts:
                continue
            action = self.actions[finding.verdict]
            line = self._line(trainer, pl_module, group, optimizer, finding)
            if finding.verdict is Verdict.NONFINITE and action in ("skip", "stop", "raise"):
                _drop_gradients(optimizer)
            if action == "raise":
                raise GradientHealthError(line)
            if action == "stop":
                stop_reason = line
            elif action == "skip":
                group.skips += 1
                if group.skips > self.max_skips:
                    stop_reason = f"{line} ({self.max_skips} steps skipped in a row)"
                elif trainer.is_global_zero:
                    log.warning("gradwatch: %s (optimizer step skipped, %d of %d)", line, group.skips, self.max_skips)
            elif finding.verdict in new and trainer.is_global_zero:
                log.warning("gradwatch: %s", line)
                if action == "alert":
                    self._alert(trainer, finding, line)
        # Every process measures the same gradients at the same steps, so all of them get here together.
        may_stop = "stop" in self.actions.values() or "skip" in self.actions.values()
        if may_stop and trainer.strategy.reduce_boolean_decision(stop_reason is not None, all=False):
            self.stopped_reason = stop_reason or "another process saw a gradient verdict"
            trainer.should_stop = True
            # Each process that saw the verdict says why; rank 0 says it stops in any case.
            if stop_reason is not None or trainer.is_global_zero:
                log.warning("gradwatch: stopping: %s", self.stopped_reason)

    def _line(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        group: _Group,
        optimizer: torch.optim.Optimizer,
        finding: Finding,
    ) -> str:
        prefix = getattr(pl_module, "config_prefixes", {}).get(group.name, "")
        advice = advise(
            finding.verdict,
            dict(pl_module.hparams),
            prefix=prefix,
            lr=optimizer.param_groups[0].get("lr"),
            clipping=bool(trainer.gradient_clip_val),
            precision=str(trainer.precision),
        )
        where = f"{group.name} " if group.name else ""
        return f"step {group.steps[-1]}: {where}{finding.describe()}; {advice}"

    def _alert(self, trainer: pl.Trainer, finding: Finding, line: str) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None or not trainer.is_global_zero:
            return
        import wandb

        title = f"gradwatch: {finding.verdict.value} gradients"
        logger.experiment.alert(title=title, text=line, level=wandb.AlertLevel.WARN, wait_duration=self.alert_interval)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        every = self.flow_every_n_epochs
        if every and (trainer.current_epoch + 1) % every == 0:
            self._log_flow(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flow_every_n_epochs is not None and self._flow_step != logging_step(trainer):
            self._log_flow(trainer)

    def _flow_due(self, trainer: pl.Trainer) -> bool:
        """Whether this is the last optimizer step before gradient-flow images are drawn."""
        if self.flow_every_n_epochs is None:
            return False
        progress = trainer.fit_loop.epoch_loop.batch_progress
        last_batch = progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        every, epoch = self.flow_every_n_epochs, trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        last_step = trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps
        return (last_batch and ((bool(every) and epoch % every == 0) or last_epoch)) or last_step

    def _log_flow(self, trainer: pl.Trainer) -> None:
        """Gradient-flow bars (the latest gradients) and the layer × step heatmap of each optimizer's layers."""
        from gradwatch.health.flow import flow_bars, flow_heatmap

        self._flow_step = logging_step(trainer)
        images = {}
        for group in self._groups.values():
            if group.stats is None or not group.steps or not trainer.is_global_zero:
                continue
            names, suffix = group.stats.names, group.suffix()
            if group.magnitudes is not None:
                mean, peak = group.magnitudes
                title = f"gradient flow {group.name}".strip()
                images[f"grad/flow/bars{suffix}"] = flow_bars(names, mean, peak, title=title)
                table = {"layer": names, "mean |grad|": mean.tolist(), "max |grad|": peak.tolist()}
                log_wandb_bars(trainer, f"grad/flow/chart{suffix}", table, "layer", "max |grad|")
                group.magnitudes = None
            with np.errstate(divide="ignore", invalid="ignore"):
                heat = np.log10(np.array(group.history, dtype=np.float64).T)
            images[f"grad/flow/heatmap{suffix}"] = flow_heatmap(names, group.steps, heat)
        log_images(trainer, images, folder="gradient-flow")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": {group.name: group.state_dict() for group in self._groups.values()},
            "stopped_reason": self.stopped_reason,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints are restored before `on_fit_start` creates the groups; they pick this up there.
        self._loaded = state_dict


def _drop_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Set the optimizer's gradients to ``None``: PyTorch optimizers skip parameters without a gradient."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def _optimizer_names(pl_module: pl.LightningModule, optimizers: list[torch.optim.Optimizer]) -> list[str]:
    """``""`` for a single optimizer; else the top-level module each one trains (``generator``) or its index."""
    if len(optimizers) <= 1:
        return [""] * len(optimizers)
    owner = {id(p): name.split(".", 1)[0] for name, p in pl_module.named_parameters()}
    names = []
    for i, optimizer in enumerate(optimizers):
        tops = {owner.get(id(p)) for g in optimizer.param_groups for p in g["params"]}
        names.append(tops.pop() if len(tops) == 1 and None not in tops else f"optimizer{i}")
    return names if len(set(names)) == len(names) else [f"optimizer{i}" for i in range(len(optimizers))]
