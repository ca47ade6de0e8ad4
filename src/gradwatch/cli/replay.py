"""``gradwatch replay FILE``: re-run a step whose gradients went non-finite, in a fresh process, and say where it began.

``FILE`` is the reproducer a ``GradientMonitor`` saved into the run folder at the run's first non-finite step
(``nonfinite-step<N>.pt``): the model's class and hyperparameters, its weights and optimizer states before the step,
the step's batch and RNG states. The model is rebuilt from its class and hyperparameters, the weights are loaded, and
the step's ``training_step`` is replayed with the same search as in training
(:func:`~gradwatch.health.origin.find_origin`); the finding is printed as training said it.

Exit status: 0 when the origin is found, 1 when the step replays finite, 2 when the file cannot be replayed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn


def build_parser() -> argparse.ArgumentParser:
    """The ``gradwatch replay`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gradwatch replay",
        description="Re-run the step a GradientMonitor saved when gradients first went non-finite "
        "(nonfinite-step<N>.pt in the run folder), in this process, and print where the first non-finite value "
        "appeared: the module, forward or backward. Exit 0 when found, 1 when the step replays finite. The file is a "
        "pickle and rebuilding runs the code of the model class it names: only replay files you trust.",
    )
    parser.add_argument("file", type=Path, help="a reproducer, nonfinite-step<N>.pt (-rank<r> under DDP)")
    parser.add_argument(
        "--device", help="where to replay: cpu, cuda, cuda:1 (default: the device it trained on if present, else cpu)"
    )
    return parser


def main(argv: list[str]) -> None:
    """Run ``gradwatch replay`` with ``argv``; print the finding (exit 0), or say the step replays finite (exit 1)."""
    args = build_parser().parse_args(argv)
    import torch

    from gradwatch.health.origin import Reproducer

    def fail(message: str) -> NoReturn:
        one_line = " ".join(message.split())  # a pickle's or a model's error can span lines
        print(f"gradwatch replay: error: {one_line}", file=sys.stderr)
        raise SystemExit(2)

    try:
        reproducer = Reproducer.load(args.file, map_location="cpu")
    except FileNotFoundError:
        fail(f"{args.file}: no such file")
    except Exception as err:  # a pickle can fail in any way: say it in one line
        fail(f"{args.file}: cannot be read as a reproducer: {err}")
    device = torch.device(args.device or _default_device(reproducer.device))
    try:
        model, optimizers, context = _rebuild(reproducer, device)
    except Exception as err:
        fail(f"cannot rebuild {reproducer.model_class} from the file: {err!r}")
    try:
        origin = reproducer.run(model, optimizers, context=context)
    except Exception as err:
        fail(f"the replayed training_step raised {err!r}")
    rank = f"rank {reproducer.rank}: " if reproducer.rank is not None else ""
    if origin is None:
        print(
            f"{rank}step {reproducer.step}: replayed on {device}; every value was finite (training saw: "
            f"{reproducer.finding or 'no origin either'})"
        )
        raise SystemExit(1)
    print(origin.line)


def _default_device(trained_on: str) -> str:
    import torch

    if trained_on.startswith("cuda") and torch.cuda.is_available():
        return trained_on
    return "cpu"


def _import(path: str, script: str | None = None) -> Any:
    """The object ``package.module.Class`` (or ``package.module.Outer.Inner``) names.

    ``__main__.Class`` is looked up in ``script``, the training script, loaded under another name than ``__main__`` so
    that its ``if __name__ == "__main__":`` block does not run.
    """
    if "<locals>" in path:
        raise ValueError(f"{path} is defined inside a function; only a class importable by its path can be rebuilt")
    parts = path.split(".")
    if parts[0] == "__main__" and script is not None:
        spec = importlib.util.spec_from_file_location("__gradwatch_replay_main__", script)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"cannot load {script}, which defines {path}")
        found = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = found  # dataclasses and pickles look classes up by their module
        spec.loader.exec_module(found)
        for name in parts[1:]:
            found = getattr(found, name)
        return found
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(f"no module of {path} can be imported (run from the folder it imports from)")


def _rebuild(reproducer: Any, device: Any) -> tuple[Any, list[Any], Any]:
    """The model (weights loaded, on ``device``), its optimizers, and the context its training step runs in."""
    import torch

    cls = _import(reproducer.model_class, reproducer.model_file)
    hparams = dict(reproducer.hparams)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        hparams = {key: value for key, value in hparams.items() if key in accepted}  # LightningCLI's own keys
    model = cls(**hparams)
    if hasattr(model, "configure_model"):
        model.configure_model()  # networks built lazily (gradwatch's models without shapes, sharded models)
    plugin = _precision(reproducer.precision, device)
    if hasattr(plugin, "convert_module"):
        model = plugin.convert_module(model)
    model.load_state_dict(reproducer.state_dict)
    model.to(device)
    model.trainer = _trainer_standin(reproducer)
    optimizers = _optimizers(model.configure_optimizers()) if hasattr(model, "configure_optimizers") else []
    for optimizer, state in zip(optimizers, reproducer.optimizers, strict=False):
        with contextlib.suppress(ValueError, KeyError, RuntimeError):  # not needed to replay; kept for users
            optimizer.load_state_dict(state)
    model.trainer.optimizers = optimizers
    for item in reproducer.inputs:
        item.batch = _to(item.batch, device, torch)
    return model, optimizers, plugin.train_step_context


def _precision(precision: str, device: Any) -> Any:
    """Lightning's precision plugin for ``precision`` (its ``train_step_context`` is the autocast of training)."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    if precision in ("16-mixed", "bf16-mixed"):
        return MixedPrecision(precision, device=device.type)
    if precision in ("16-true", "bf16-true"):
        return HalfPrecision(precision)
    if precision == "64-true":
        return DoublePrecision()
    return Precision()


class _Trainer(SimpleNamespace):
    """The Trainer as a replayed training step sees it: the counters training recorded, and nothing else."""

    def __getattr__(self, name: str) -> Any:
        known = ", ".join(sorted(vars(self)))
        raise AttributeError(f"trainer.{name} is not rebuilt by gradwatch replay (it has {known})")


def _trainer_standin(reproducer: Any) -> SimpleNamespace:
    """What a training step may read of its Trainer, as it was at the step (the counters training recorded)."""
    counters = dict(reproducer.trainer)
    loop = SimpleNamespace(total_batch_idx=counters.pop("total_batch_idx", 0), batch_idx=counters.pop("batch_idx", 0))
    rank = counters.get("global_rank", 0)
    return _Trainer(
        **counters,
        fit_loop=SimpleNamespace(epoch_loop=loop),
        is_global_zero=rank == 0,
        training=True,
        sanity_checking=False,
        precision=reproducer.precision,
        lr_scheduler_configs=[],
        optimizers=[],
    )


def _optimizers(configured: Any) -> list[Any]:
    """The optimizers in whatever form ``configure_optimizers`` returned them (schedulers left out)."""
    import torch

    if configured is None:
        return []
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return _optimizers(configured.get("optimizer"))
    if isinstance(configured, (list, tuple)):
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)):  # ([optimizers], [schedulers])
            return _optimizers(list(configured[0]))
        return [o for item in configured for o in _optimizers(item)]
    return []


def _to(value: Any, device: Any, torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(item, device, torch) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to(item, device, torch) for item in value)
    return value
