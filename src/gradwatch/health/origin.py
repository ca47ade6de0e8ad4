"""Where a non-finite value first appeared: one step replayed with every module watched, forward and backward.

The guard (:class:`~gradwatch.health.tracker.GradientTracker` with ``nonfinite_guard``) says *that* a step's gradients
went non-finite, and which layers hold them; by then a NaN made anywhere has spread through the whole backward pass.
:func:`find_origin` replays the step once, from the weights it started with, and names the first module where a
value went non-finite:

- **batch**: a non-finite value in the batch itself is named as such, before anything runs.
- **forward**: a forward pre-hook and a forward hook on every module; the first module (in the order the hooks
  finish, so the innermost) whose output holds a non-finite value while its inputs were all finite. A NaN made by
  code outside every module (a loss written in ``training_step``) shows as a non-finite loss whose modules' outputs
  are all finite.
- **backward**: if the forward is finite, the loss is differentiated with ``torch.autograd.grad`` (the parameters'
  ``.grad`` are never touched, so DDP's gradient hooks do not fire and the real step keeps its gradients) with a hook
  on every node of its graph; the first node, in the order the engine runs them, that returns a non-finite gradient
  from finite incoming ones is the origin. Each node is mapped to the innermost module whose forward created it by
  autograd's sequence numbers (every module call spans an interval of them). The replayed forward runs in anomaly
  mode, so the origin node also carries the source line that created it. Anomaly mode's own NaN check is not used:
  it sees NaN but not Inf, and it raises at the first NaN node, which can lie downstream of an Inf origin. Full
  backward hooks on modules are not used either: they fail on in-place activations (``ReLU(inplace=True)``).

:class:`Reproducer` is what a replay needs (weights, batch, RNG states, the model's class and hyperparameters) and is
saved into the run folder; ``gradwatch replay FILE`` loads it in a fresh process and runs the same search.
:class:`NonfiniteTracer` keeps the current step's batch and RNG states for a training loop (references and a 5 KB
RNG copy per batch, only while tracing is armed) and replays once.

Nothing here imports Lightning. The replay drives a LightningModule-shaped object through its ``training_step``
(:func:`training_step_replay`): ``log`` and ``log_dict`` do nothing, optimizers' ``step`` and ``zero_grad`` do nothing,
``manual_backward`` is where the search looks, schedulers do not step; everything else runs as written.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwatch.rundir import REPRODUCER_FILE

BATCH, FORWARD, BACKWARD = "batch", "forward", "backward"
#: The ``format`` key of a reproducer file.
REPRODUCER_FORMAT = "gradwatch-nonfinite/1"


@dataclass(frozen=True)
class Count:
    """Non-finite elements among ``numel``."""

    nan: int = 0
    inf: int = 0
    numel: int = 0

    @property
    def nonfinite(self) -> int:
        """NaN and Inf elements together."""
        return self.nan + self.inf

    def describe(self) -> str:
        """``3 of 4096 elements inf``, ``5 of 4096 elements non-finite (3 nan, 2 inf)``."""
        if self.nan and self.inf:
            return f"{self.nonfinite} of {self.numel} elements non-finite ({self.nan} nan, {self.inf} inf)"
        return f"{self.nonfinite} of {self.numel} elements {'nan' if self.nan else 'inf'}"


@dataclass(frozen=True)
class Origin:
    """Where a step's first non-finite value appeared.

    Attributes:
        phase: ``forward``, ``backward``, or ``batch`` (the data itself held it).
        module: The module path (``blocks.7.attn``; ``""`` for the model itself), ``None`` outside every module.
        count: The non-finite elements of its output (forward), of the gradients it returned (backward), or of the
            batch.
        op: The autograd node that returned them (``SqrtBackward0``), backward only.
        where: Where the forward created that node (``model.py:42 in forward``), when anomaly mode recorded it.
        weights_finite: Whether the module's own parameters were finite (forward).
        model: The model's class name, to name the model itself.
        step: The step it was replayed for.
        rank: The process (under DDP), else ``None``.
        micro_batch: Which batch of the step's accumulation window, counted from 0.
        micro_batches: Batches in that window.
    """

    phase: str
    module: str | None
    count: Count
    op: str | None = None
    where: str | None = None
    weights_finite: bool = True
    model: str = ""
    step: int = 0
    rank: int | None = None
    micro_batch: int = 0
    micro_batches: int = 1

    @property
    def name(self) -> str:
        """The module in backquotes, the model by its class, or ``outside any module``."""
        if self.module is None:
            return ""
        return f"`{self.module}`" if self.module else f"the model itself (`{self.model}`)"

    def describe(self) -> str:
        """The finding without step or rank: ``first non-finite value in the forward output of `x` (...)``."""
        notes = []
        if self.op:
            notes.append(self.op + (f" at {self.where}" if self.where else ""))
        if self.phase == FORWARD and self.module is None:
            notes.append("every module's output finite")
        elif self.phase == FORWARD:
            notes.append("inputs finite" if self.weights_finite else "inputs finite, weights not")
        elif self.phase == BACKWARD:
            notes.append("incoming gradient finite")
        notes.append(self.count.describe())
        if self.micro_batches > 1:
            notes.append(f"micro-batch {self.micro_batch + 1} of {self.micro_batches}")
        detail = "; ".join(notes)
        if self.phase == BATCH:
            return f"first non-finite value in the batch itself, before any module ({detail})"
        if self.phase == FORWARD and self.module is None:
            return f"first non-finite value in the forward, outside any module: the loss ({detail})"
        if self.phase == FORWARD:
            return f"first non-finite value in the forward output of {self.name} ({detail})"
        if self.module is None:
            return f"first non-finite value in the backward, outside any module ({detail})"
        return f"first non-finite value in the backward of {self.name} ({detail})"

    @property
    def line(self) -> str:
        """The finding as gradwatch says it: ``[rank 1: ]step 12: first non-finite value in ...``."""
        rank = f"rank {self.rank}: " if self.rank is not None else ""
        return f"{rank}step {self.step}: {self.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``verdicts.jsonl``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["count"] = {"nan": self.count.nan, "inf": self.count.inf, "numel": self.count.numel}
        return values


# --- counting ---------------------------------------------------------------------------------------------------------


def _tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The floating-point tensors in ``value`` (a tensor, or tuples, lists, mappings, dataclasses of them)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif depth > 8:
        return
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _tensors(getattr(value, name, None), depth + 1)


@torch.no_grad()
def _finite(values: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(values))


@torch.no_grad()
def _count(values: Any) -> Count:
    nan = inf = numel = 0
    for t in _tensors(values):
        t = t.detach()
        numel += t.numel()
        if not bool(torch.isfinite(t).all()):
            nan += int(torch.isnan(t).sum())
            inf += int(torch.isinf(t).sum())
    return Count(nan, inf, numel)


def _next_sequence_nr() -> int:
    """The sequence number autograd gives the next node it creates on this thread."""
    get = getattr(torch.autograd, "_get_sequence_nr", None)
    if get is not None:
        return int(get())
    probe = torch.zeros((), requires_grad=True).view(())  # older torch: a throwaway node says where the count is
    return int(probe.grad_fn._sequence_nr()) + 1


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')


def _where(node: Any) -> str | None:
    """``path:line in fn`` of the code that created ``node`` (anomaly mode's record), the path relative if it can be.

    The innermost frame outside torch's own code: the user's ``F.layer_norm(...)`` line, not torch's inside it.
    """
    try:
        trace = node.metadata.get("traceback_")
    except (AttributeError, RuntimeError):
        return None
    frames = [m for m in (_FRAME.search(entry) for entry in trace or ()) if m]
    if not frames:
        return None
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    last = next((f for f in reversed(frames) if not f["file"].startswith(torch_dir)), frames[-1])
    path = last["file"]
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path)
        path = relative if not relative.startswith("..") else path
    return f"{path}:{last['line']} in {last['fn']}"


# --- the search -------------------------------------------------------------------------------------------------------


class _Found(BaseException):
    """Unwinds a replayed ``training_step`` once the search is over.

    A ``BaseException``, so that user code catching ``Exception`` around its backward pass cannot swallow it.
    """

    def __init__(self, origin: Origin | None) -> None:
        super().__init__()
        self.origin = origin


@dataclass
class _Call:
    name: str
    start: int
    inputs_finite: bool
    end: int = -1


class OriginSearch:
    """Watches a model's forward passes and differentiates each loss it is shown, until a value goes non-finite.

    Made by :func:`find_origin`; the step being replayed calls :meth:`check` with each loss that the original step
    backpropagated (after the forward passes that made it), and :meth:`skip` for one it need not examine.

    Args:
        model: The model, whose every module is watched.
        loss_scale: What the original step multiplied the loss by before its backward pass (a GradScaler's scale),
            so that overflows in the backward pass replay too.
    """

    def __init__(self, model: nn.Module, *, loss_scale: float = 1.0) -> None:
        self.model = model
        self.loss_scale = loss_scale
        self.micro_batch, self.micro_batches = 0, 1
        self._stack: list[_Call] = []
        self._calls: list[_Call] = []
        self._forward: Origin | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Forward hooks on every module for the duration; none is left behind."""
        handles = []
        try:
            for name, module in self.model.named_modules():
                handles.append(module.register_forward_pre_hook(self._enter(name), with_kwargs=True))
                handles.append(module.register_forward_hook(self._leave(name, module), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def begin(self, batch: Any, micro_batch: int, micro_batches: int) -> None:
        """A new batch of the step starts.

        Raises:
            _Found: the batch itself holds a non-finite value.
        """
        self.micro_batch, self.micro_batches = micro_batch, micro_batches
        self.skip()
        count = _count(batch)
        if count.nonfinite:
            raise _Found(self._origin(BATCH, None, count))

    def skip(self) -> None:
        """Forget the forward passes since the last loss: their loss is not examined."""
        self._stack, self._calls, self._forward = [], [], None

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            self._stack.append(_Call(name, _next_sequence_nr(), _finite((args, kwargs))))

        return hook

    def _leave(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            while self._stack and self._stack[-1].name != name:  # a forward that raised left its entry behind
                self._stack.pop()
            if not self._stack:
                return
            call = self._stack.pop()
            call.end = _next_sequence_nr()
            self._calls.append(call)
            if self._forward is not None or not call.inputs_finite:
                return
            count = _count(output)
            if count.nonfinite:
                weights = _finite(list(module.parameters(recurse=False)))
                self._forward = self._origin(FORWARD, name, count, weights_finite=weights)

        return hook

    def _origin(self, phase: str, module: str | None, count: Count, **more: Any) -> Origin:
        return Origin(
            phase,
            module,
            count,
            model=type(self.model).__name__,
            micro_batch=self.micro_batch,
            micro_batches=self.micro_batches,
            **more,
        )

    def check(self, loss: Any) -> None:
        """Examine the forward passes that made ``loss``, then its backward pass.

        Raises:
            _Found: a non-finite value was found (the replay stops there).
        """
        if self._forward is not None:
            raise _Found(self._forward)
        if isinstance(loss, torch.Tensor) and (loss.is_floating_point() or loss.is_complex()):
            count = _count(loss)
            if count.nonfinite:
                raise _Found(self._origin(FORWARD, None, count))
            origin = self._backward(loss)
            if origin is not None:
                raise _Found(origin)
        self.skip()

    def _backward(self, loss: torch.Tensor) -> Origin | None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if loss.grad_fn is None or not params:
            return None
        found: list[tuple[Any, Count]] = []

        def hook(node: Any, grad_inputs: Sequence[torch.Tensor | None], grad_outputs: Sequence[Any]) -> None:
            if found or not _finite(list(grad_outputs)):
                return
            count = _count(list(grad_inputs))
            if count.nonfinite:
                found.append((node, count))

        handles = [node.register_hook(lambda gi, go, node=node: hook(node, gi, go)) for node in _graph(loss.grad_fn)]
        try:
            seed = torch.full_like(loss, self.loss_scale)
            # retain_graph: a training step may backpropagate the same graph again (manual_backward(retain_graph=True)).
            torch.autograd.grad(loss, params, grad_outputs=seed, allow_unused=True, retain_graph=True)
        finally:
            for handle in handles:
                handle.remove()
        if not found:
            return None
        node, count = found[0]
        return self._origin(BACKWARD, self._owner(node), count, op=node.name(), where=_where(node))

    def _owner(self, node: Any) -> str | None:
        """The innermost module call whose forward created ``node`` (by sequence number), ``None`` if none did."""
        try:
            number = int(node._sequence_nr())
        except (AttributeError, RuntimeError):
            return None
        inside = [call for call in self._calls if call.start <= number < call.end]
        return max(inside, key=lambda call: call.start).name if inside else None


def _graph(root: Any) -> list[Any]:
    """Every node of an autograd graph but its leaves' gradient accumulators (``torch.autograd.grad`` skips them)."""
    seen, stack, nodes = {id(root)}, [root], []
    while stack:
        node = stack.pop()
        if type(node).__name__ != "AccumulateGrad":
            nodes.append(node)
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return nodes


def find_origin(
    model: nn.Module,
    run: Callable[[OriginSearch], None],
    *,
    step: int = 0,
    rank: int | None = None,
    loss_scale: float = 1.0,
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Origin | None:
    """Replay a step with ``run`` and say where its first non-finite value appeared.

    The model comes out as it went in: its buffers (batch norm's running statistics), its metrics' states, its
    parameters' ``requires_grad`` and ``.grad``, its train / eval modes and the RNG states are put back.

    Args:
        model: The model (every module is watched).
        run: Runs the step's forward passes, calling :meth:`OriginSearch.check` with each loss.
        step: The step named in the finding.
        rank: The process named in the finding (under DDP).
        loss_scale: What the step multiplied its loss by before the backward pass.
        context: The context the step's forward runs in (autocast under mixed precision).

    Returns:
        The origin, or ``None`` when every value of the replay was finite.

    Example::

        >>> class LogOf(nn.Module):
        ...     def forward(self, x):
        ...         return torch.log(x)
        >>> model = nn.Sequential(nn.Linear(2, 2), LogOf())
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(-1.0), model[0].bias.zero_()
        >>> origin = find_origin(model, lambda search: search.check(model(torch.ones(1, 2)).sum()), step=3)
        >>> origin.line
        'step 3: first non-finite value in the forward output of `1` (inputs finite; 2 of 2 elements nan)'
    """
    search = OriginSearch(model, loss_scale=loss_scale)
    origin = None
    with _kept(model), search.watching(), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the user's own warnings were said the first time the step ran
        with torch.autograd.set_detect_anomaly(True, check_nan=False), context():
            try:
                run(search)
            except _Found as found:
                origin = found.origin
    return replace(origin, step=step, rank=rank) if origin is not None else None


@contextlib.contextmanager
def _kept(model: nn.Module) -> Iterator[None]:
    """Put back what running a training step changes, other than what the search itself avoids changing."""
    buffers = list(model.buffers())
    saved_buffers = [b.detach().clone() for b in buffers]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    metrics = _metric_states(model)
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved_buffers, strict=True):
                buffer.copy_(value)
        for p, flag, grad in zip(params, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.training = training
        for module, state in metrics:
            for name, value in state.items():
                setattr(module, name, value)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _metric_states(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Copies of the states of the model's torchmetrics metrics (``add_state`` attributes and update counters).

    A replayed ``training_step`` updates them again; they are put back after, so the step is not counted twice.
    """
    kept = []
    for module in model.modules():
        defaults = getattr(module, "_defaults", None)
        if isinstance(defaults, dict) and hasattr(module, "_update_count"):
            names = [*defaults, "_update_count", "_computed", "_forward_cache"]
            kept.append((module, {n: copy.deepcopy(module.__dict__[n]) for n in names if n in module.__dict__}))
    return kept


# --- replaying a training_step ----------------------------------------------------------------------------------------


@dataclass
class ReplayInput:
    """One batch of a step: what ``training_step`` got, and the RNG states when it started.

    Attributes:
        batch: The batch, as the training step received it (on the device).
        batch_idx: Its index.
        rng: ``cpu`` and, on a GPU, ``cuda``: ``get_rng_state()`` at the batch's start.
    """

    batch: Any
    batch_idx: int
    rng: dict[str, torch.Tensor] = field(default_factory=dict)


def rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The RNG states a forward pass on ``device`` draws from (CPU always; the device's own on a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`'s output (a CUDA state is skipped where there is no GPU)."""
    if "cpu" in state:
        torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class _ReplayOptimizer:
    """An optimizer as a replayed ``training_step`` sees it: ``step`` runs the closure only, ``zero_grad`` nothing."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


class _ReplayScheduler:
    """A learning-rate scheduler whose ``step`` does nothing."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)


def _params(optimizer: Any) -> list[torch.Tensor]:
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextlib.contextmanager
def _patched(obj: Any, **attributes: Any) -> Iterator[None]:
    """Set instance attributes for the duration (shadowing methods), then remove them again."""
    missing = object()
    before = {name: obj.__dict__.get(name, missing) for name in attributes}
    for name, value in attributes.items():
        object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is missing:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, value)


def training_step_replay(
    module: nn.Module,
    inputs: Sequence[ReplayInput],
    *,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    schedulers: Sequence[Any] = (),
    manual: bool = False,
    backwards: tuple[int, int] | None = None,
    device: torch.device | None = None,
) -> Callable[[OriginSearch], None]:
    """What :func:`find_origin` runs to replay a LightningModule-shaped ``module``'s step over ``inputs``.

    Each input's RNG states are restored, then ``module.training_step(batch, batch_idx)`` runs with ``log`` and
    ``log_dict`` doing nothing. Automatic optimization: the loss it returns is examined. Manual optimization:
    ``manual_backward`` examines its loss instead of backpropagating, ``optimizers()`` returns optimizers whose
    ``step`` only runs its closure and whose ``zero_grad`` does nothing, ``toggle_optimizer`` freezes the other
    optimizers' parameters as Lightning's does, ``lr_schedulers()`` do not step and ``clip_gradients`` does nothing.

    Args:
        module: The LightningModule (anything with ``training_step``).
        inputs: The step's batches: one, or the accumulation window's.
        optimizers: Its optimizers (what ``optimizers()`` returns under manual optimization).
        schedulers: Its learning-rate schedulers.
        manual: Whether ``training_step`` calls ``manual_backward`` and steps its optimizers itself.
        backwards: Manual optimization: which ``manual_backward`` calls of the step fed the optimizer step that went
            non-finite (``(start, end)``, counted from 0); those before are run without a backward pass, and the
            replay stops after the last. All of them when ``None``.
        device: Where the RNG states of ``inputs`` apply.
    """
    wrapped = [_ReplayOptimizer(o) for o in optimizers]
    toggled: dict[torch.Tensor, bool] = {}

    def toggle_optimizer(optimizer: Any) -> None:
        toggled.clear()
        for other in optimizers:
            for p in _params(other):
                if p not in toggled:
                    toggled[p] = p.requires_grad
                    p.requires_grad_(False)
        for p in _params(optimizer):
            p.requires_grad_(toggled[p])

    def untoggle_optimizer(optimizer: Any) -> None:
        for p, flag in toggled.items():
            p.requires_grad_(flag)
        toggled.clear()

    calls = [0]  # manual_backward calls in the current batch's training_step
    search_of: list[OriginSearch] = []

    def manual_backward(loss: Any, *args: Any, **kwargs: Any) -> None:
        index, calls[0] = calls[0], calls[0] + 1
        if backwards is None or backwards[0] <= index < backwards[1]:
            search_of[0].check(loss)
        else:
            search_of[0].skip()
        if backwards is not None and index + 1 >= backwards[1]:
            raise _Found(None)  # the rest of the step came after the optimizer step that went non-finite

    patches: dict[str, Any] = {"log": _nothing, "log_dict": _nothing}
    if manual:
        patches.update(
            manual_backward=manual_backward,
            optimizers=lambda use_pl_optimizer=True: wrapped[0] if len(wrapped) == 1 else list(wrapped),
            lr_schedulers=lambda: _schedulers(schedulers),
            toggle_optimizer=toggle_optimizer,
            untoggle_optimizer=untoggle_optimizer,
            clip_gradients=_nothing,
        )

    def run(search: OriginSearch) -> None:
        search_of[:] = [search]
        for i, item in enumerate(inputs):
            set_rng_state(item.rng, device)
            search.begin(item.batch, i, len(inputs))
            calls[0] = 0
            with _patched(module, **patches):
                output = module.training_step(item.batch, item.batch_idx)
            if not manual:
                search.check(output.get("loss") if isinstance(output, Mapping) else output)

    return run


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _schedulers(schedulers: Sequence[Any]) -> Any:
    if not schedulers:
        return None
    wrapped = [_ReplayScheduler(s) for s in schedulers]
    return wrapped[0] if len(wrapped) == 1 else wrapped


# --- the reproducer ---------------------------------------------------------------------------------------------------


@dataclass
class Reproducer:
    """Everything a replay of one step needs, in one file; ``gradwatch replay FILE`` runs it in a fresh process.

    Attributes:
        model_class: ``package.module.Class`` of the model.
        model_file: The script that defines it, when that is the program itself (``__main__.Class``).
        hparams: The arguments that rebuild it (a LightningModule's ``hparams``, shapes filled in).
        state_dict: Its weights, and its buffers as they were before the step's forward passes where known.
        optimizers: The optimizers' ``state_dict`` s, before the step.
        inputs: The step's batches and RNG states.
        manual: Whether the model uses manual optimization.
        backwards: Manual optimization: the ``manual_backward`` calls that fed the optimizer step (see
            :func:`training_step_replay`).
        step: The step.
        rank: The process under DDP, else ``None``.
        trainer: The trainer's counters at the step (``global_step``, ``current_epoch``, ``total_batch_idx``...), for
            a training step that reads them.
        precision: Lightning's precision (``32-true``, ``bf16-mixed``...).
        loss_scale: What the step multiplied its loss by before the backward pass.
        requires_grad: Parameter name → ``requires_grad`` (frozen layers stay frozen).
        eval_modules: Modules in eval mode during training.
        device: The device it ran on.
        buffers_before_step: Whether the buffers in ``state_dict`` are those before the step's forward passes (else
            after them: batch norm's running statistics, which training-mode batch norm does not read).
        finding: The finding of the replay in the training process.
    """

    model_class: str
    hparams: dict[str, Any]
    state_dict: dict[str, Any]
    inputs: list[ReplayInput]
    model_file: str | None = None
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    manual: bool = False
    backwards: tuple[int, int] | None = None
    step: int = 0
    rank: int | None = None
    trainer: dict[str, Any] = field(default_factory=dict)
    precision: str = "32-true"
    loss_scale: float = 1.0
    requires_grad: dict[str, bool] = field(default_factory=dict)
    eval_modules: list[str] = field(default_factory=list)
    device: str = "cpu"
    buffers_before_step: bool = False
    finding: str | None = None

    def run(
        self,
        module: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        *,
        schedulers: Sequence[Any] = (),
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> Origin | None:
        """Replay the step on ``module`` (holding this step's weights) and find its origin.

        Frozen parameters and eval-mode modules are set as they were during training for the replay.

        Args:
            module: The model.
            optimizers: Its optimizers (under manual optimization, what ``optimizers()`` returns).
            schedulers: Its learning-rate schedulers.
            context: The context its training step runs in (the precision's autocast).
        """
        device = next((p.device for p in module.parameters()), torch.device(self.device))
        replay = training_step_replay(
            module,
            self.inputs,
            optimizers=optimizers,
            schedulers=schedulers,
            manual=self.manual,
            backwards=self.backwards,
            device=device,
        )
        named = [(p, self.requires_grad[name]) for name, p in module.named_parameters() if name in self.requires_grad]
        before = [(p, p.requires_grad) for p, _ in named]
        evaluated = [m for name, m in module.named_modules() if name in set(self.eval_modules) and m.training]
        try:
            for p, flag in named:
                p.requires_grad_(flag)
            for m in evaluated:
                m.training = False
            return find_origin(
                module, replay, step=self.step, rank=self.rank, loss_scale=self.loss_scale, context=context
            )
        finally:
            for p, flag in before:
                p.requires_grad_(flag)
            for m in evaluated:
                m.training = True

    def save(self, path: str | Path) -> Path:
        """Write the file whole or not at all (a temporary file beside it, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["inputs"] = [{"batch": i.batch, "batch_idx": i.batch_idx, "rng": i.rng} for i in self.inputs]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"format": REPRODUCER_FORMAT, "torch": torch.__version__, **values}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = None) -> Reproducer:
        """Read a file :meth:`save` wrote. It is a pickle: only load files you trust.

        Raises:
            ValueError: not a reproducer file.
        """
        data = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(data, dict) or data.get("format") != REPRODUCER_FORMAT:
            raise ValueError(f"{path} is not a gradwatch reproducer (written by GradientMonitor on a non-finite step)")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["inputs"] = [ReplayInput(**item) for item in values["inputs"]]
        if values.get("backwards") is not None:
            values["backwards"] = tuple(values["backwards"])
        return cls(**values)


# --- in a training loop -----------------------------------------------------------------------------------------------


class NonfiniteTracer:
    """Keeps the current step's batches and RNG states, and traces the first non-finite step once.

    A training loop calls :meth:`batch_start` as each batch starts (before its forward pass), :meth:`backward` before
    each backward pass and :meth:`stepped` after each optimizer step is measured. Kept per step: references to the
    batches (the accumulation window's; under manual optimization the current batch only) and a copy of the RNG
    states (CPU: 5 KB, about 2 µs; CUDA: a few bytes, host-side), let go once the step is taken. Nothing else is done
    until :meth:`trace`.

    Example::

        >>> tracer = NonfiniteTracer()
        >>> tracer.batch_start(torch.ones(2), 0)
        >>> tracer.backward()
        >>> len(tracer.inputs), tracer.backwards
        (1, 1)
    """

    def __init__(self) -> None:
        #: The batches of the current step.
        self.inputs: list[ReplayInput] = []
        #: Backward passes since the current step's first batch started.
        self.backwards = 0
        #: Backward passes that fed earlier optimizer steps of the same batch (manual optimization).
        self.examined_from = 0
        #: Whether the tracer has replayed (it replays once).
        self.done = False
        self._closed = True
        self._manual = False

    def batch_start(
        self, batch: Any, batch_idx: int, device: torch.device | None = None, *, keep: bool = True, manual: bool = False
    ) -> None:
        """A batch starts: keep it (and the RNG states) when ``keep``; a new step forgets the previous one's."""
        self._manual = manual
        if self._closed or manual:
            self.inputs, self.backwards, self.examined_from, self._closed = [], 0, 0, False
        if keep and not self.done:
            self.inputs.append(ReplayInput(batch, batch_idx, rng_state(device)))

    def backward(self) -> None:
        """A backward pass is about to run."""
        self.backwards += 1

    def stepped(self) -> None:
        """An optimizer step was measured: the next batch starts a new step.

        Under automatic optimization the step's batches are let go at once (the training loop frees them too);
        under manual optimization the batch may feed another optimizer's step, and is let go at the next batch.
        """
        self.examined_from, self._closed = self.backwards, True
        if not self._manual:
            self.inputs = []

    def reproducer(
        self,
        module: nn.Module,
        *,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        manual: bool = False,
        step: int = 0,
        rank: int | None = None,
        toggled: Mapping[torch.Tensor, bool] | None = None,
        **more: Any,
    ) -> Reproducer:
        """What a replay of the current step needs (the weights as they are now: before the step's update).

        Args:
            module: The model (a LightningModule: its ``hparams`` rebuild it).
            optimizers: Its optimizers.
            manual: Whether it uses manual optimization.
            step: The step.
            rank: The process under DDP.
            toggled: ``requires_grad`` of parameters that a toggled optimizer froze for the moment, as they are outside
                the toggle (Lightning's ``toggle_optimizer``): the replay toggles them itself.
            **more: Further :class:`Reproducer` fields (``trainer``, ``precision``, ``loss_scale``...).
        """
        cls = type(module)
        toggled = toggled or {}
        where, script = cls.__module__, None
        # A class of the training script itself: `python -m pkg.train` gives it a name, `python train.py` a file.
        if where == "__main__":
            main = sys.modules.get("__main__")
            spec = getattr(main, "__spec__", None)
            where = spec.name if spec is not None and spec.name else where
            script = os.path.abspath(main.__file__) if where == "__main__" and getattr(main, "__file__", None) else None
        return Reproducer(
            model_class=f"{where}.{cls.__qualname__}",
            model_file=script,
            hparams=dict(getattr(module, "hparams", {}) or {}),
            state_dict={},
            inputs=list(self.inputs),
            optimizers=[o.state_dict() for o in optimizers],
            manual=manual,
            backwards=(self.examined_from, self.backwards) if manual else None,
            step=step,
            rank=rank,
            requires_grad={name: toggled.get(p, p.requires_grad) for name, p in module.named_parameters()},
            eval_modules=[name for name, m in module.named_modules() if not m.training],
            device=str(next((p.device for p in module.parameters()), "cpu")),
            **more,
        )

    def trace(
        self,
        module: nn.Module,
        *,
        step: int,
        rank: int | None = None,
        folder: Path | None = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        schedulers: Sequence[Any] = (),
        manual: bool = False,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        buffers_before: Sequence[torch.Tensor] | None = None,
        toggled: Mapping[torch.Tensor, bool] | None = None,
        **more: Any,
    ) -> tuple[Origin | None, Path | None]:
        """Replay the current step once, from the weights as they are now (before its update), and save it.

        Call it after the step's backward passes and before its optimizer step. The model is left as it was: its
        buffers as the step's forward passes left them, its gradients untouched.

        Args:
            module: The model.
            step: The step.
            rank: The process under DDP.
            folder: Where to save the reproducer (:data:`~gradwatch.rundir.REPRODUCER_FILE`); under DDP only a
                process that found the origin saves one. Nothing is saved when ``None``.
            optimizers: Its optimizers.
            schedulers: Its learning-rate schedulers.
            manual: Whether it uses manual optimization.
            context: The context its training step runs in (the precision's autocast).
            buffers_before: The model's buffers as they were before the step's forward passes (in
                ``module.buffers()`` order), when they were kept; the replay starts from them.
            toggled: See :meth:`reproducer`.
            **more: Further :class:`Reproducer` fields (``trainer``, ``precision``, ``loss_scale``).

        Returns:
            The origin (``None`` when the replay was finite) and the reproducer's path (``None`` when not saved).
        """
        self.done = True
        reproducer = self.reproducer(
            module,
            optimizers=optimizers,
            manual=manual,
            step=step,
            rank=rank,
            toggled=toggled,
            buffers_before_step=buffers_before is not None,
            **more,
        )
        self.inputs = []
        buffers = list(module.buffers())
        after = [b.detach().clone() for b in buffers]
        try:
            if buffers_before is not None:
                with torch.no_grad():
                    for buffer, value in zip(buffers, buffers_before, strict=True):
                        buffer.copy_(value)
            origin = reproducer.run(module, optimizers, schedulers=schedulers, context=context)
            reproducer.finding = origin.line if origin is not None else None
            path = None
            if folder is not None and (origin is not None or rank is None):
                reproducer.state_dict = module.state_dict()
                name = REPRODUCER_FILE.format(step=step, rank=f"-rank{rank}" if rank is not None else "")
                path = reproducer.save(Path(folder) / name)
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, after, strict=True):
                    buffer.copy_(value)
        return origin, path
