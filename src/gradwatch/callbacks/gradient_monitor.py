"""``GradientMonitor``: the Lightning adapter over :class:`~gradwatch.health.tracker.GradientTracker`."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from gradwatch.errors import ConfigError
from gradwatch.health import Finding, Verdict, advise
from gradwatch.health.origin import NonfiniteTracer, Origin
from gradwatch.health.tracker import GradientTracker, Report, TrackerConfig
from gradwatch.loggers import log_histograms, log_images, log_metrics, log_wandb_bars, logging_step, run_dir
from gradwatch.rundir import FLOW_DIR, GRAD_HIST, LAYERS_KEY, append_verdict

# Verdicts are one line each on stderr (logging's last-resort handler when the user configured none), not warnings,
# which would print the source line under them.
log = logging.getLogger("gradwatch")


class GradientHealthError(RuntimeError):
    """Raised by :class:`GradientMonitor` when a verdict's action is ``raise``."""


class GradientMonitor(Callback):
    r"""Per-layer gradient statistics and verdicts on vanishing, exploding and non-finite gradients.

    Measures at ``on_before_optimizer_step`` (after gradient accumulation and AMP unscaling, before clipping),
    every ``log_every_n_steps`` steps of each optimizer, counted in that optimizer's own steps, and always at its
    first: per layer (module owning parameters, ordered input → output as the forward pass uses them) the
    gradient norm ``grad/norm/<layer>``, the parameter norm ``param/norm/<layer>`` and the update-to-parameter ratio
    ``grad/update_ratio/<layer>`` (the last update, whatever the optimizer), and the total ``grad/norm_total`` (the
    norm gradient clipping uses: each parameter counted once, tied weights included). Statistics are computed on
    the device with fused ``torch._foreach_*`` ops and copied to the host once per logging step; other steps do
    nothing (unless ``nonfinite_guard``). The rules live in the trainer-free
    :class:`~gradwatch.health.tracker.GradientTracker`; this callback wires them to the Trainer.

    Verdicts (:class:`~gradwatch.health.Verdict`) are logged as layer counts ``health/vanishing``,
    ``health/exploding`` and ``health/nonfinite``, with ``health/attenuation`` (log10 of the first layer's
    gradient norm over the last's), through every logger and in ``trainer.callback_metrics``, so
    ``EarlyStopping(monitor="health/exploding", mode="min", divergence_threshold=0.5)`` stops on explosions.
    When a verdict appears, its action runs with one line naming the layers, the likely cause and a remedy drawn
    from the model's configuration and from the evidence (before any update, the initialization; after, the
    learning rate).

    - **Fine-tuning**: the watched layers follow the optimizer's trainable parameters and param groups, so layers
      a ``BaseFinetuning`` callback unfreezes are measured from the step they train.
    - **Manual optimization**: each optimizer is measured at its own steps (a GAN's generator and discriminator
      separately; totals then carry the network's name, ``grad/norm_total/generator``).
    - **fp16**: steps the GradScaler skips while it calibrates are counted in ``grad/scaler_skips``; non-finite
      gradients are a verdict only once the scale has fallen to 1.
    - **DDP**: gradients are already averaged, so every process computes the same statistics; rank 0 logs them.
    - **FSDP2** (``fully_shard``, ``ModelParallelStrategy``) and **FSDP1** (``FSDPStrategy(use_orig_params=True)``):
      the shards' squared norms are summed with one all-reduce per measurement, so every process holds the full
      tensors' statistics. DeepSpeed is refused: its ZeRO partitions are not per-layer tensors.

    Args:
        log_every_n_steps: Measure every this many steps of each optimizer; the Trainer's ``log_every_n_steps``
            when ``None``.
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
            gradients out of the weights; with the guard, the step's forward passes are undone in the buffers
            too (batch norm's running statistics are put back as they were before the step).
        on_stalled: What to do when training stalls while its gradients flow (``stalled``: the training loss, still
            far above what solves the task, stopped falling; see ``stall_window``): ``warn``, ``alert``, ``stop`` or
            ``raise``. The chance-level loss comes from the DataModule's ``chance_loss`` when it has one.
        max_skips: Consecutive steps ``skip`` may skip.
        stall_window: Optimizer steps per window of the ``stalled`` verdict (the mean training loss of the last window
            against the one before; at least two measurements' worth); ``None`` never judges a stall. Not judged with
            several optimizers (a GAN).
        nonfinite_guard: Check every step for non-finite gradients (one fused norm and one scalar copy per step,
            and with several processes one scalar all-reduce), not only logging steps. On with
            ``on_nonfinite="skip"``.
        flow_every_n_epochs: Log gradient-flow images (per-layer mean / max |grad| bars, and a layer × step
            heatmap of gradient norms) every this many epochs and at the end of fit; ``0``: only at the end;
            ``None``: never. They are drawn only for a receiver: a logger (W&B and TensorBoard show them, and the
            PNGs go into the run folder); without any logger nothing is drawn.
        alert_interval: Seconds between two W&B alerts with the same title.
        trace_nonfinite: When gradients first go non-finite (with the guard, or at a measured step), replay that step
            once from its weights before the update, with hooks on every module and anomaly mode, and say where the
            first non-finite value appeared: the module, forward or backward (under DDP, which process). The finding
            goes into ``verdicts.jsonl`` and the report; ``nonfinite-step<N>.pt`` in the run folder holds the weights,
            optimizer states, batch and RNG states, and ``gradwatch replay FILE`` re-runs it in a fresh process.
            While armed it keeps a reference to the step's batch and a copy of the RNG states (5 KB) at the steps
            it checks; finite steps cost nothing more. Sharded parameters (FSDP) are not replayed.

    Raises:
        ConfigError: a bad argument; the message names it and the valid values. At fit start, also watch patterns
            that match no layer, a DeepSpeed strategy and FSDP1 without ``use_orig_params=True``.

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
        on_stalled: str = "warn",
        max_skips: int = 3,
        stall_window: int | None = 40,
        nonfinite_guard: bool = False,
        flow_every_n_epochs: int | None = 10,
        alert_interval: float = 600.0,
        trace_nonfinite: bool = True,
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ConfigError(
                f"GradientMonitor: log_every_n_steps must be >= 1 or None, got {log_every_n_steps}",
                param="log_every_n_steps",
            )
        if flow_every_n_epochs is not None and flow_every_n_epochs < 0:
            raise ConfigError(
                f"GradientMonitor: flow_every_n_epochs must be >= 0 or None, got {flow_every_n_epochs}",
                param="flow_every_n_epochs",
            )
        try:
            self.config = TrackerConfig(
                every=log_every_n_steps or 1,
                include=include,
                exclude=exclude,
                group_depth=group_depth,
                update_ratio=update_ratio,
                histograms=histograms,
                nonfinite_guard=nonfinite_guard,
                actions={
                    Verdict.VANISHING: on_vanishing,
                    Verdict.EXPLODING: on_exploding,
                    Verdict.NONFINITE: on_nonfinite,
                    Verdict.STALLED: on_stalled,
                },
                max_skips=max_skips,
                stall_window=stall_window,
                thresholds={
                    "vanishing_norm": vanishing_norm,
                    "max_attenuation": max_attenuation,
                    "exploding_norm": exploding_norm,
                    "max_growth": max_growth,
                    "patience": patience,
                },
            )
        except ConfigError as err:
            raise ConfigError(f"GradientMonitor: {err}", param=err.param) from err
        self.log_every_n_steps = log_every_n_steps
        self.flow_every_n_epochs = flow_every_n_epochs
        self.alert_interval = alert_interval
        self.trace_nonfinite = trace_nonfinite
        #: Where the first non-finite value appeared, once it has been traced.
        self.origin: Origin | None = None
        self._tracer: NonfiniteTracer | None = None
        #: The rules and state of this fit (``None`` before it starts).
        self.tracker: GradientTracker | None = None
        #: Why the monitor stopped training, if it did.
        self.stopped_reason: str | None = None
        self._loaded: dict[str, Any] | None = None
        self._flow_step: int | None = None
        self._run_dir: Path | None = None
        self._flow_folder: Path | None = None
        # Under the guard with skip / stop / raise: the module's buffers (batch norm's running statistics) as they
        # were before the step's first forward pass, to put back when its gradients are dropped.
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []
        self._stepped = True

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps,
            include=self.config.include,
            exclude=self.config.exclude,
            group_depth=self.config.group_depth,
        )

    @property
    def findings(self) -> list[Finding]:
        """The verdicts that stand after the latest measurements, over all optimizers."""
        return self.tracker.findings if self.tracker is not None else []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ConfigError(
                "GradientMonitor: DeepSpeed is not supported: ZeRO keeps gradients in flat partitions, not per-layer"
                " tensors, so per-layer norms would be wrong. Use FSDP (ModelParallelStrategy, or"
                " FSDPStrategy(use_orig_params=True)), or --gradients null to train without the monitor",
            )
        # Resolved here, on every process: `trainer.log_dir` is a collective under DDP, so asking for it later on
        # rank 0 alone would hang or kill the run. Without any logger there is no run folder to receive anything.
        self._run_dir = run_dir(trainer) if trainer.loggers else None
        self._flow_folder = self._run_dir / FLOW_DIR if self._run_dir is not None else None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        # FSDP1 wraps the LightningModule from outside: its sharding is found on the strategy's model.
        root = trainer.strategy.model if isinstance(trainer.strategy.model, torch.nn.Module) else None
        config = dataclasses.replace(self.config, every=every)
        # What a model that learned nothing scores: the DataModule knows (`ln(classes)` for its classification).
        chance = getattr(trainer.datamodule, "chance_loss", None)
        self.tracker = GradientTracker(pl_module, config, scaler=scaler, root=root, chance_loss=chance)
        self._flow_step = None
        for optimizer, name in zip(trainer.optimizers, _optimizer_names(pl_module, trainer.optimizers), strict=True):
            try:
                self.tracker.watch(optimizer, name)
            except ConfigError as err:
                raise ConfigError(f"GradientMonitor: {err}", param=err.param) from err
        if not any(self.tracker.layers_of(optimizer) for optimizer in trainer.optimizers):
            raise ConfigError(
                f"GradientMonitor: no module with trainable parameters matches include={list(self.config.include)}"
                f" exclude={list(self.config.exclude)}",
                param="include" if self.config.include else "exclude",
            )
        dropping = self.config.actions[Verdict.NONFINITE] in ("skip", "stop", "raise")
        self._buffers = list(pl_module.buffers()) if dropping and self.config.nonfinite_guard else []
        self._saved = [b.clone() for b in self._buffers]
        self._stepped = True
        self._tracer = NonfiniteTracer() if self.trace_nonfinite and self.origin is None else None
        if self._loaded is not None:
            self.tracker.load_state_dict(self._loaded["groups"])
            self.stopped_reason = self._loaded["stopped_reason"]
            self._loaded = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        # The first batch of a step (several when gradients accumulate): the buffers before its forward passes.
        if self._buffers and self._stepped:
            torch._foreach_copy_(self._saved, self._buffers)
            self._stepped = False
        if self._tracer is not None and not self._tracer.done and self.tracker is not None:
            # Kept only where a non-finite step can be seen: every step under the guard, else the measured ones.
            every = self.tracker.config.every
            due = self.config.nonfinite_guard or any(g.optimizer_steps % every == 0 for g in self.tracker.groups)
            manual = not pl_module.automatic_optimization
            self._tracer.batch_start(batch, idx, pl_module.device, keep=due, manual=manual)

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.tracker is not None:
            # The stall verdict compares the loss with the chance-level loss: undo what Lightning did to it before
            # this hook, divided by the batches it accumulates and, in fp16, multiplied by the GradScaler's scale
            # (its scale tensor, read on the device: no sync).
            automatic = pl_module.automatic_optimization
            scale: float | torch.Tensor = trainer.accumulate_grad_batches if automatic else 1
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None and scaler.is_enabled() and getattr(scaler, "_scale", None) is not None:
                scale = scale / scaler._scale
            self.tracker.observe(loss, scale=scale)
        if self._tracer is not None:
            self._tracer.backward()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.tracker is None:
            return
        self._stepped = True
        # Lightning clips by norm when no algorithm is given.
        clip = trainer.gradient_clip_val if trainer.gradient_clip_algorithm in (None, "norm") else None
        report = self.tracker.step(optimizer, step=logging_step(trainer), clip=clip or None)
        if report is not None:
            if report.layout_changed:
                self._log_layer_order(trainer)
            log_metrics(trainer, self.tracker.metrics(report, clip=clip or None))
            if report.measurement.histograms is not None:
                m = report.measurement
                log_histograms(trainer, {GRAD_HIST + name: m.histograms[i] for i, name in enumerate(m.names)})
            self._act(trainer, pl_module, report, optimizer)
        elif self._flow_due(trainer):
            # Read now: Lightning frees the gradients before validation, so they are gone at the epoch's end.
            self.tracker.keep_magnitudes(optimizer)
        if self._tracer is not None:
            self._tracer.stepped()

    def _log_layer_order(self, trainer: pl.Trainer) -> None:
        """Log the layers, input → output, as the hyperparameter :data:`LAYERS_KEY` of every logger.

        Metric keys cannot carry the order (CSV headers are sorted, W&B panels list keys alphabetically), and
        reports and dashboards draw layers in it. A GAN's groups follow each other; logged again when the layers
        change (a backbone unfrozen).
        """
        assert self.tracker is not None
        names = [name for group in self.tracker.groups for name in group.order]
        for logger in trainer.loggers:
            logger.log_hyperparams({LAYERS_KEY: names})

    def _act(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, report: Report, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.tracker is not None
        if self._flow_due(trainer) or (report.stop is not None and self._flow_folder is not None):
            self.tracker.keep_magnitudes(optimizer)  # the flow bars' data, before the gradients may be dropped
        if report.drop_gradients:
            _drop_gradients(optimizer)
            if self._buffers:  # the forward passes that made the NaN also wrote it into the running statistics
                torch._foreach_copy_(self._buffers, self._saved)
        stop_reason = raised = None
        for action in report.actions:
            advice = self._advice(trainer, pl_module, report, action.finding)
            where = f"{report.group.name} " if report.group.name else ""
            line = f"step {report.step}: {where}{action.finding.describe()}; {advice}"
            self._record(trainer, report, action.finding, line, advice)
            if action.action == "raise":
                raised = raised or line
            elif action.action == "stop":
                stop_reason = stop_reason or (f"{line} ({action.note})" if action.note else line)
            elif not trainer.is_global_zero:
                continue
            elif action.action == "skip":
                log.warning("gradwatch: %s (%s)", line, action.note)
            else:
                log.warning("gradwatch: %s", line)
                if action.action == "alert":
                    self._alert(trainer, action.finding, line)
        self._trace(trainer, pl_module, report)
        # Every process measures at the same steps and reaches this together; a verdict one process saw (its shard
        # of a NaN) stops them all, instead of the others waiting forever in the next collective.
        actions = set(self.config.actions.values())
        if not actions & {"stop", "skip", "raise"}:
            return
        decided = stop_reason or raised
        if trainer.strategy.reduce_boolean_decision(decided is not None, all=False):
            if raised is not None:
                raise GradientHealthError(raised)
            self.stopped_reason = stop_reason or "another process saw a gradient verdict"
            trainer.should_stop = True
            # Each process that saw the verdict says why; rank 0 says it stops in any case.
            if stop_reason is not None or trainer.is_global_zero:
                log.warning("gradwatch: stopping: %s", self.stopped_reason)

    def _trace(self, trainer: pl.Trainer, pl_module: pl.LightningModule, report: Report) -> None:
        """The first non-finite step: replay it once to find where it began, and save it as a reproducer.

        Every process replays its own batch, with no collective (under DDP the verdict is the same on every process,
        and one that saw none does not wait for the others); the one that finds the origin says it, records it in
        ``verdicts.jsonl`` and saves its reproducer. A GradScaler's calibration skips are no verdict: no replay.
        """
        tracer = self._tracer
        finding = next((f for f in report.group.findings if f.verdict is Verdict.NONFINITE), None)
        if tracer is None or tracer.done or finding is None:
            return
        rank = trainer.global_rank if trainer.world_size > 1 else None
        where = f"{f'rank {rank}: ' if rank is not None else ''}step {report.step}"
        sharded = any(g.stats is not None and g.stats.sharding.sharded for g in self.tracker.groups)
        if sharded or not tracer.inputs:
            tracer.done = True
            why = "sharded parameters are not replayed" if sharded else "its batch was not kept"
            log.warning("gradwatch: %s: not traced to where the non-finite value began: %s", where, why)
            return
        try:
            self.origin, path = tracer.trace(
                pl_module, step=report.step, rank=rank, folder=self._run_dir, **self._replay_setting(trainer, pl_module)
            )
        except Exception as err:  # the replay must never end the training it is about
            log.warning("gradwatch: %s: could not replay the step to trace the non-finite value: %r", where, err)
            return
        saved = f" (reproducer: {path}; `gradwatch replay {path}` re-runs it)" if path is not None else ""
        if self.origin is None:
            if rank is None or trainer.is_global_zero:  # under DDP, likely another process's batch made it
                mine = " of this process's batch" if rank is not None else ""
                elsewhere = "made elsewhere (a hook or callback writing gradients) or does not reproduce"
                log.warning("gradwatch: %s: the replay%s found every value finite: %s%s", where, mine, elsewhere, saved)
            return
        log.warning("gradwatch: %s%s", self.origin.line, saved)
        if self._run_dir is not None:
            entry = {
                "step": report.step,
                "verdict": finding.verdict.value,
                "network": report.group.name,
                "layers": [self.origin.module] if self.origin.module else [],
                "line": self.origin.line,
                "advice": self._advice(trainer, pl_module, report, finding),
                "origin": self.origin.to_dict(),
                "reproducer": str(path) if path is not None else None,
            }
            append_verdict(self._run_dir, entry)

    def _replay_setting(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """What :meth:`NonfiniteTracer.trace` needs of the Trainer to replay the current step as it ran."""
        manual = not pl_module.automatic_optimization
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        loop = trainer.fit_loop.epoch_loop
        return {
            "optimizers": trainer.optimizers,
            "schedulers": [config.scheduler for config in trainer.lr_scheduler_configs],
            "manual": manual,
            "context": trainer.precision_plugin.train_step_context,
            # Under skip / stop / raise the buffers before the step's forward passes are kept: the replay starts there.
            "buffers_before": self._saved if self._buffers else None,
            # Inside `toggled_optimizer` (manual optimization) Lightning froze the other optimizers' parameters.
            "toggled": getattr(pl_module, "_param_requires_grad_state", None),
            "trainer": {
                "global_step": trainer.global_step,
                "current_epoch": trainer.current_epoch,
                "total_batch_idx": loop.total_batch_idx,
                "batch_idx": loop.batch_idx,
                "global_rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
            },
            "precision": str(trainer.precision),
            # Automatic optimization divides the loss by the accumulation before the scaler multiplies it.
            "loss_scale": scale if manual else scale / trainer.accumulate_grad_batches,
        }

    def _advice(self, trainer: pl.Trainer, pl_module: pl.LightningModule, report: Report, finding: Finding) -> str:
        group = report.group
        assert group.optimizer is not None
        return advise(
            finding.verdict,
            dict(pl_module.hparams),
            prefix=getattr(pl_module, "config_prefixes", {}).get(group.name, ""),
            lr=group.optimizer.param_groups[0].get("lr"),
            clipping=bool(trainer.gradient_clip_val),
            precision=str(trainer.precision),
            updates=report.updates,
            signals=_stall_signals(report) if finding.verdict is Verdict.STALLED else None,
        )

    def _record(self, trainer: pl.Trainer, report: Report, finding: Finding, line: str, advice: str) -> None:
        """Keep the line in the run folder, where the report shows it beside the run's charts."""
        if self._run_dir is None or not trainer.is_global_zero:
            return
        entry = {
            "step": report.step,
            "verdict": finding.verdict.value,
            "network": report.group.name,
            "layers": list(finding.layers),
            "line": line,
            "advice": advice,
        }
        append_verdict(self._run_dir, entry)

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
        """Whether this is the last optimizer step before gradient-flow images are drawn (for a receiver)."""
        if self.flow_every_n_epochs is None or self._flow_folder is None:
            return False
        progress = trainer.fit_loop.epoch_loop.batch_progress
        last_batch = progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        every, epoch = self.flow_every_n_epochs, trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        last_step = trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps
        return (last_batch and ((bool(every) and epoch % every == 0) or last_epoch)) or last_step

    def _log_flow(self, trainer: pl.Trainer) -> None:
        """Gradient-flow bars (the latest gradients) and the layer × step heatmap of each optimizer's layers.

        Drawn on rank 0 only, and only for a receiver; no collective is reached here.
        """
        self._flow_step = logging_step(trainer)
        if self.tracker is None or self._flow_folder is None or not trainer.is_global_zero:
            return
        from gradwatch.callbacks.flow import flow_bars, flow_heatmap

        images = {}
        for group in self.tracker.groups:
            if not group.steps:
                continue
            suffix = group.suffix
            if group.magnitudes is not None:
                names, mean, peak = group.magnitudes
                title = f"gradient flow {group.name}".strip()
                images[f"grad/flow/bars{suffix}"] = flow_bars(names, mean, peak, title=title)
                table = {"layer": list(names), "mean |grad|": mean.tolist(), "max |grad|": peak.tolist()}
                log_wandb_bars(trainer, f"grad/flow/chart{suffix}", table, "layer", "max |grad|")
                group.magnitudes = None
            names, norms = group.heatmap()
            with np.errstate(divide="ignore", invalid="ignore"):
                images[f"grad/flow/heatmap{suffix}"] = flow_heatmap(names, group.steps, np.log10(norms))
        log_images(trainer, images, self._flow_folder)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": self.tracker.state_dict() if self.tracker is not None else {},
            "stopped_reason": self.stopped_reason,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints are restored before `on_fit_start` creates the tracker; it picks this up there.
        self._loaded = state_dict


def _stall_signals(report: Report) -> dict[str, float]:
    """What the advice on a stall reads: the median update ratio, the attenuation, the recent losses' spread."""
    m, signals = report.measurement, {}
    ratio = m.update_ratio
    if ratio is not None and np.isfinite(ratio[m.measured]).any():
        signals["update_ratio"] = float(np.nanmedian(np.where(np.isfinite(ratio), ratio, np.nan)[m.measured]))
    if m.attenuation is not None:
        signals["attenuation"] = m.attenuation
    spread = report.group.stall.spread if report.group.stall is not None else None
    if spread is not None:
        signals["spread"] = spread
    return signals


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
