"""``ActivationMonitor``: the Lightning adapter over :class:`~gradwatch.health.activations.ActivationSampler`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from gradwatch.errors import ConfigError
from gradwatch.health.activations import ActivationSampler, find_activations
from gradwatch.health.distributed import all_gather, process_count
from gradwatch.health.layers import check_patterns
from gradwatch.loggers import log_metrics, logging_step


class ActivationMonitor(Callback):
    """Sample activation statistics every ``every_n_steps`` training steps, with hooks that exist only then.

    On a sampling step a forward hook is registered on every activation layer when the batch starts and removed
    when it ends, before validation can run; no hook exists on other steps, nor after an exception or the end of
    training. The statistics of all forward passes of the batch (both networks of a GAN, every optimizer of
    manual optimization) are reduced on the device and read with one host transfer, then logged to every logger and
    published in ``trainer.callback_metrics``:

    - ``act/dead/<layer>``: fraction of channels that are ``<= 0`` on the whole batch (ReLU family);
    - ``act/saturated/<layer>``: fraction of outputs where the derivative is below 5% of its maximum (sigmoid, tanh
      and their hard variants, softsign);
    - ``act/mean/<layer>``, ``act/std/<layer>``: mean and std of the outputs.

    :mod:`gradwatch.health.activations` defines them exactly and lists the layers recognized. Sampled are the steps
    loggers log under (batches that stepped: one per batch under manual optimization, whatever the number of
    optimizers) that ``every_n_steps`` divides, so the first batch is; with gradient accumulation only the first
    batch of a step is. Under DDP and FSDP every process samples its own batch and the statistics are pooled over
    all of them with one all-gather (a unit dead on one process's batch and alive on another's counts as half
    dead, as for two calls of one layer), then rank 0 logs them.

    Under ``torch.compile`` Dynamo does not guard on module hooks by default, so hooks added after the first
    compilation are silently skipped by the compiled code. Set ``torch._dynamo.config.skip_nnmodule_hook_guards =
    False`` before training: sampling then costs no graph break, and the compiled step switches between two cached
    graphs (with and without hooks). The callback warns when it finds a compiled model without that setting.

    Args:
        every_n_steps: Sample every this many steps; ``trainer.log_every_n_steps`` when ``None`` (with
            ``log_every_n_steps=0`` nothing is sampled).
        include: fnmatch patterns on layer names (``"backbone.*"``); when given, only matching layers are sampled.
        exclude: fnmatch patterns on layer names that are never sampled (``"*.head.*"``).

    Raises:
        ConfigError: ``every_n_steps`` is not a positive int, or a pattern is not a non-empty string.

    Example::

        >>> monitor = ActivationMonitor(every_n_steps=50, exclude=["generator.*"])
        >>> # Trainer(callbacks=[monitor]).fit(model): act/dead/discriminator.blocks.0.act, ... at steps 0, 50, 100, ...
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ConfigError(
                f"ActivationMonitor: every_n_steps must be a positive int or None, got {every_n_steps!r}",
                param="every_n_steps",
            )
        self.every_n_steps = every_n_steps
        for param, patterns in (("include", include), ("exclude", exclude)):
            check_patterns(patterns, owner="ActivationMonitor", param=param)
        self._sampler = ActivationSampler(include=include, exclude=exclude)
        self._last_sampled: int | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_sampled = None
        sampler = self._sampler
        if not find_activations(pl_module, include=sampler.include, exclude=sampler.exclude):
            rank_zero_warn(
                f"ActivationMonitor found no activation layer to sample in {type(pl_module).__name__}"
                f" (include={list(sampler.include)}, exclude={list(sampler.exclude)}); it will log nothing."
            )
        if _is_compiled(pl_module) and torch._dynamo.config.skip_nnmodule_hook_guards:
            rank_zero_warn(
                "ActivationMonitor: the model is compiled, and torch.compile skips hooks added after it compiled"
                " unless `torch._dynamo.config.skip_nnmodule_hook_guards = False` is set before training."
            )

    def _every(self, trainer: pl.Trainer) -> int:
        return self.every_n_steps if self.every_n_steps is not None else trainer.log_every_n_steps

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._release()  # the hooks of a batch that never ended (the module skipped it)
        every, step = self._every(trainer), logging_step(trainer)
        # Under gradient accumulation consecutive batches share a step: sample the first one only.
        if every < 1 or step % every != 0 or step == self._last_sampled:
            return
        self._last_sampled = step
        self._sampler.attach(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._sampler.attached:
            return
        self._sampler.detach()
        # Every process sampled this step: pool their batches (one all-gather), so rank 0 logs all of them.
        log_metrics(trainer, self._sampler.read(gather=all_gather if process_count() > 1 else None))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()  # never sample validation, even after a batch that skipped on_train_batch_end

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        # Drop the hooks, and what they saw, of a batch that never reached on_train_batch_end.
        if self._sampler.attached:
            self._sampler.detach()
            self._sampler.read()


def _is_compiled(module: torch.nn.Module) -> bool:
    # `trainer.fit(torch.compile(model))` compiles the steps in place; `torch.compile(submodule)` wraps it.
    return getattr(module, "_compiler_ctx", None) is not None or any(
        isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in module.modules()
    )
