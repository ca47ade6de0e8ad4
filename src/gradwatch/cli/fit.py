"""``gradwatch fit|validate|test|predict`` through LightningCLI, and the dry parser the sweep check uses."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from gradwatch.callbacks.gradient_monitor import GradientMonitor
from gradwatch.callbacks.preemption import Preemption
from gradwatch.cli.messages import explain
from gradwatch.errors import ConfigError
from gradwatch.loggers import run_dir
from gradwatch.resume import AtomicCheckpointIO, check_checkpoint, check_writable, find_run, resume_checkpoint
from gradwatch.rundir import (
    CONFIG_FILE,
    MONITOR_NAMESPACES,
    PREEMPTED_EXIT,
    RESUME_ENV,
    VERDICTS,
    latest_checkpoint,
    root_dir,
    verdict_key,
)

#: What a full or read-only disk raises: said in one line, not a traceback.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class GradwatchCLI(LightningCLI):
    """LightningCLI with gradwatch's models and DataModules selectable by name and its default loggers.

    ``--trainer.logger`` left unset means gradwatch's loggers (:func:`gradwatch.loggers.default_loggers`): a
    CSV file and a W&B run, both under ``<default_root_dir>/<run id>/``. ``--trainer.logger false`` turns
    logging off; any logger given explicitly replaces them.
    """

    def __init__(self, args: list[str] | None = None, *, resume: Path | None = None) -> None:
        # Importing the packages registers their classes, so `--model CNN` and `--data DigitsDataModule` resolve.
        import gradwatch.data
        import gradwatch.models  # noqa: F401

        self.resume = resume
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            # Small datasets have few batches per epoch; Lightning's default of 50 would log no training step.
            trainer_defaults={"default_root_dir": root_dir(), "log_every_n_steps": 10},
            # A resumed run keeps the config.yaml it started with (the one `--resume` read).
            save_config_callback=None if resume else SaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
        )

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # `--trainer.max_epoch 1` must not quietly mean `--trainer.max_epochs`.
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, and turn a rejected argument into one short :class:`ConfigError` (:mod:`gradwatch.cli.messages`)."""
        # Parse errors raise instead of printing usage and exiting, in the main parser and in each subcommand's.
        parser.exit_on_error = False
        subparsers = parser._subcommands_action._name_parser_map
        for subparser in subparsers.values():
            subparser.exit_on_error = False
        argv = list(sys.argv[1:] if args is None else args)
        try:
            with warnings.catch_warnings():
                # Lightning warns when `args` are given while sys.argv holds the command that runs this check.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
        except argparse.ArgumentError as exc:
            subparser = subparsers.get(argv[0]) if argv else None
            options = [o for a in (subparser or parser)._actions for o in a.option_strings]
            raise ConfigError(explain(exc, argv[1:] if subparser else argv, options)) from exc

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Put :class:`~gradwatch.callbacks.GradientMonitor` on every run, configurable under ``--gradients.*``."""
        parser.add_lightning_class_args(GradientMonitor, "gradients", subclass_mode=True, required=False)
        parser.set_defaults({"gradients": {"class_path": "gradwatch.callbacks.GradientMonitor"}})

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        root = config.get("default_root_dir") or root_dir()
        # The model and the DataModule exist by now; the Trainer, its loggers and any run folder do not yet.
        self._check(Path(root))
        if config.get("logger") in (None, True):
            from gradwatch.loggers import default_loggers

            run_id = self.resume.name if self.resume is not None else None
            config["logger"] = default_loggers(root, run_id=run_id, resume=self.resume is not None)
        # `--gradients null` turns the always-on GradientMonitor off.
        callbacks = [c for c in callbacks if c is not None]
        trainer = super()._instantiate_trainer(config, [*callbacks, Preemption()])
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own, nor a sharded one
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a SIGTERM or a full disk ends it with one line saying what was kept and how to go on."""
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            raise SystemExit(self._interrupted()) from None
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            folder = run_dir(self.trainer)
            kept = latest_checkpoint(folder)
            resume = f"; free space, then `gradwatch fit --resume {folder}`" if kept else ""
            self._close_wandb(exit_code=1)
            print(
                f"gradwatch: error: {os.strerror(exc.errno)} writing {exc.filename or folder} at step "
                f"{self.trainer.global_step}; kept: {kept or 'no checkpoint'}{resume}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1) from None

    def _interrupted(self) -> int:
        """Close a run that SIGTERM stopped; the exit status tells preempted (143) from stopped on purpose (0)."""
        preemption = next(cb for cb in self.trainer.callbacks if isinstance(cb, Preemption))
        if preemption.stopped_reason is not None:
            self._finish(headline=f"stopped at step {self.trainer.global_step}: {preemption.stopped_reason}")
            return 0
        saved = preemption.preempted
        if saved is None:  # before the first batch: nothing to continue from
            self._finish(headline="interrupted before training started", exit_code=PREEMPTED_EXIT)
            return PREEMPTED_EXIT
        folder = run_dir(self.trainer)
        self._finish(
            headline=f"preempted ({saved.signal}) at step {saved.step}, epoch {saved.epoch}; checkpoint "
            f"{saved.checkpoint}; resume with `gradwatch fit --resume {folder}`",
            exit_code=PREEMPTED_EXIT,
        )
        return PREEMPTED_EXIT

    @override
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning reads the hyperparameters in it (a damaged file is one line)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand == "fit" and ckpt_path in ("last", "hpc") and self.resume is None:
            raise ConfigError(
                f"--ckpt_path {ckpt_path}: a new run has no checkpoints of its own; to continue a run, "
                "`gradwatch fit --resume runs/<run id>`"
            )
        if ckpt_path not in (None, "last", "hpc", "best"):
            check_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def _check(self, root: Path) -> None:
        """Check the data against the model, and the output folder, before the Trainer exists."""
        from gradwatch.models.base import GradwatchModule

        if self.subcommand != "fit":
            # Evaluating a checkpoint in a run folder of its own: its ModelCheckpoint's folder changed, as it should.
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        if isinstance(self.model, GradwatchModule):
            self.model.check_data(self.datamodule)
        # A checkpoint holds the weights and, for Adam, two moments of each: three copies of the parameters.
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        check_writable(root, need=3 * weights)

    def _finish(self, saved: str | None = None, *, headline: str | None = None, exit_code: int = 0) -> None:
        """Close the W&B run and say in one line where everything went.

        Args:
            saved: What the subcommand wrote (predictions), said instead of where the metrics are.
            headline: How the run ended, when it did not simply finish (preempted, stopped).
            exit_code: The W&B run's exit code.
        """
        csv = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        logged = self.trainer.callback_metrics
        scores = {k: v for k, v in logged.items() if k.startswith(("val/", "test/"))}
        parts = [headline] if headline else []
        parts += [", ".join(f"{k} {float(v):.4g}" for k, v in sorted(scores.items()))] if scores else []
        # A loss gone NaN between two measurements of a short run: the last verdicts cannot vouch for it.
        broken = sorted(k for k, v in logged.items() if k.endswith("loss") and not math.isfinite(float(v)))
        if broken:
            parts.append(f"{', '.join(broken)} not finite")
        verdicts = {v: int(logged[verdict_key(v)]) for v in VERDICTS if verdict_key(v) in logged}
        stalled = verdicts.pop("stalled", 0)
        if verdicts:  # the GradientMonitor's last word: how many layers each verdict named at the last measurement
            named = ", ".join(f"{verdict} in {n} layers" for verdict, n in verdicts.items() if n)
            quiet = "no gradient verdict at the last measurement" if broken else "gradients healthy"
            parts.append(f"gradients: {named}" if named else quiet)
        if stalled:
            parts.append("training stalled")
        if saved is not None:
            parts.append(saved)
        elif csv is not None:
            parts.append(f"metrics in {Path(csv.log_dir) / 'metrics.csv'}")
        parts += self._close_wandb(exit_code)
        if parts and self.trainer.is_global_zero:
            print("gradwatch: " + "; ".join(parts), flush=True)

    def _close_wandb(self, exit_code: int) -> list[str]:
        """Finish the W&B run (rank 0) with ``exit_code``; where it went, and how to upload it when offline."""
        wandb_logger = next((lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is None or not self.trainer.is_global_zero:
            return []
        import wandb

        run = wandb_logger.experiment
        offline = run.settings.mode in ("offline", "dryrun")
        sync_dir = run.settings.sync_dir
        wandb.finish(exit_code=exit_code)
        if not offline:  # online: where to watch it (W&B disabled: no run, no address)
            return [run.url] if run.url else []
        # A resumed offline run is one folder per start; `wandb sync` uploads them, in order, as one run.
        pieces = sorted(Path(sync_dir).parent.glob(f"offline-run-*-{run.id}"))
        sync = " ".join(map(str, pieces)) if len(pieces) > 1 else sync_dir
        return [f"W&B offline run in {sync_dir} (upload: wandb sync {sync})"]

    def after_predict(self) -> None:
        """Save the predictions, one tensor in the test set's order, beside the run's other files."""
        import torch

        # `log_dir` is a collective under DDP: every process asks for it before rank 0 alone writes.
        root = run_dir(self.trainer)
        batches = self.trainer.predict_loop.predictions
        if not batches or not self.trainer.is_global_zero:
            return self._finish()
        path = root / "predictions.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(batches) if isinstance(batches[0], torch.Tensor) else batches, path)
        return self._finish(saved=f"predictions in {path}")

    # LightningCLI calls `after_<subcommand>` when it exists.
    after_fit = after_validate = after_test = _finish


class FitChecker:
    """``gradwatch fit``'s own parser, to check arguments as a run would parse them, without training.

    Each :meth:`check` parses one command line and instantiates the model, the DataModule and the callbacks it
    configures (so a bad activation name fails as it would in the run); no Trainer, logger or run is created. The
    parser is built once, which is what makes checking every value of a sweep take seconds.

    Args:
        args: A ``gradwatch`` command line, starting with the subcommand (``fit ...``).

    Raises:
        ConfigError: ``args`` themselves do not parse.
    """

    def __init__(self, args: list[str]) -> None:
        try:
            self._cli = _DryCLI(args)
        except Exception as exc:
            raise ConfigError(_parser_message(exc)) from exc

    def check(self, args: list[str]) -> Any:
        """Parse and instantiate ``args``; return the parsed config of the subcommand.

        Raises:
            ConfigError: with jsonargparse's or the class's own message.
        """
        return self._cli.dry_run(args)

    @property
    def instantiated(self) -> Any:
        """The last checked command line's instances by config key (``model``, ``data``, ``gradients``...)."""
        return self._cli.instantiated

    def options(self, config: Any) -> set[str]:
        """Every dotted option of a parsed ``config`` as a user writes it (``model.depth``, ``trainer.max_epochs``)."""
        names = set()
        for key in config.keys():  # noqa: SIM118 (a jsonargparse Namespace: keys() are the nested dotted keys)
            parts = [part for part in key.split(".") if part != "init_args"]
            if parts[-1] == "class_path":
                parts.pop()
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return names

    def logged_metrics(self, config: Any) -> tuple[list[str], list[str]] | None:
        """The keys a run of ``config`` logs, and the namespaces its monitors log per layer (``grad/``).

        ``None`` when the model does not say which keys it logs (a LightningModule that is not a gradwatch one).
        """
        init = self.instantiated
        model = init.get("model")
        if not hasattr(model, "logged_metrics"):
            return None
        if hasattr(model, "check_data"):
            model.check_data(init.get("data"))
        namespaces = list(MONITOR_NAMESPACES["gradients"]) if config.get("gradients") else []
        callbacks = config.get("trainer.callbacks") or []
        if any("ActivationMonitor" in str(getattr(c, "class_path", c)) for c in callbacks):
            namespaces += MONITOR_NAMESPACES["activations"]
        return list(model.logged_metrics()), namespaces


class _DryCLI(GradwatchCLI):
    """GradwatchCLI that parses and instantiates the model, data and callbacks, then stops before the Trainer."""

    def __init__(self, args: list[str]) -> None:
        self.instantiated: Any = None
        super().__init__(args)

    def dry_run(self, args: list[str]) -> Any:
        try:
            self.parse_arguments(self.parser, args)
            self.subcommand = self.config["subcommand"]
            # LightningCLI keeps its first parse's hyperparameters here and `save_hyperparameters` prefers them to
            # the model's own arguments: each check's model must be built from its own command line.
            vars(self).pop("config_dump", None)
            self.instantiate_classes()
        except Exception as exc:
            raise ConfigError(_parser_message(exc)) from exc
        return self.config[self.subcommand]

    @override
    def _set_seed(self) -> None:
        """Seed nothing: a check must not change the caller's random state."""

    @override
    def instantiate_classes(self) -> None:
        subcommand = self.config["subcommand"]
        self.instantiated = self.parser.instantiate_classes(self.config)[subcommand]

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        """Train nothing."""


def _parser_message(exc: BaseException) -> str:
    """The line of a jsonargparse error that says what is wrong, or a ConfigError's own message."""
    err = find_config_error(exc)
    if err is not None:
        return str(err)
    # jsonargparse explains a union type alternative by alternative; the line that matters is the innermost one.
    noise = (
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Expected a <class 'NoneType'>",
        "Given value",
        "Problem with",
    )
    lines = [line.strip().lstrip("- ") for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(noise)]
    return " ".join(kept[-2:]) if kept else (lines[-1] if lines else type(exc).__name__)


def find_config_error(exc: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``exc``; jsonargparse wraps errors raised while instantiating classes."""
    while exc is not None and not isinstance(exc, ConfigError):
        exc = exc.__cause__ or exc.__context__
    return exc


def describe(err: ConfigError) -> str:
    """One paragraph: the flag behind ``err`` (``--model.depth`` when a model raised it) and the message."""
    if err.param is None:
        return str(err)
    section, tb = "", err.__traceback__
    while tb is not None:  # the innermost gradwatch object on the stack tells model from data
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, LightningModule):
            section = "model"
        elif isinstance(owner, LightningDataModule):
            section = "data"
        elif isinstance(owner, GradientMonitor):
            section = "gradients"
        tb = tb.tb_next
    return f"--{section}.{err.param}: {err}" if section else f"{err.param}: {err}"


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def main(args: list[str] | None = None) -> None:
    """Run the ``gradwatch`` command; bad configuration exits with status 2 and one paragraph, no traceback."""
    # albumentations checks online for a newer release at import; trials and offline machines must not wait.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Lightning 2.6 calls a torch pytree API that torch 2.15 deprecates, once per run: not the user's to act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning advertises its cloud services twice a run ("💡 Tip: ... litlogger", "... litmodels").
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)
    # A full disk makes W&B's own log handlers fail on every line; the one line below says what happened.
    logging.raiseExceptions = False
    try:
        argv, resume = _resumed(list(sys.argv[1:] if args is None else args))
        GradwatchCLI(argv, resume=resume)
    except Exception as exc:
        err = find_config_error(exc)
        if err is None:
            raise
        print(f"gradwatch: error: {describe(err)}", file=sys.stderr)
        sys.exit(2)


def _resumed(argv: list[str]) -> tuple[list[str], Path | None]:
    """``fit --resume RUN ...`` (or ``$GRADWATCH_RESUME``) as the command line that continues RUN.

    The run's own ``config.yaml`` comes first, the flags given with ``--resume`` override it, and the run's folder,
    id and newest checkpoint are fixed last.
    """
    names = [word.split("=", 1)[1] for word in argv if word.startswith("--resume=")]
    names += [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--resume"]
    if not names and not (os.environ.get(RESUME_ENV) and argv[:1] == ["fit"]):
        return argv, None
    if argv[:1] != ["fit"]:
        raise ConfigError("--resume: only `gradwatch fit` continues a run")
    if len(names) > 1:
        raise ConfigError(f"--resume given {len(names)} times: {', '.join(names)}")
    if any(word == "--ckpt_path" or word.startswith("--ckpt_path=") for word in argv):
        raise ConfigError("--resume and --ckpt_path: give one (--resume continues the run from its newest checkpoint)")
    rest = [w for i, w in enumerate(argv[1:], 1) if not (w.startswith("--resume") or argv[i - 1] == "--resume")]
    roots = [root_dir()] + [argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--trainer.default_root_dir"]
    folder = find_run(names[0] if names else os.environ[RESUME_ENV], roots)
    checkpoint = resume_checkpoint(folder)
    config = ["--config", str(folder / CONFIG_FILE)]
    root = os.path.relpath(folder.parent) if folder.is_relative_to(Path.cwd()) else str(folder.parent)
    fixed = ["--trainer.default_root_dir", root, "--ckpt_path", str(checkpoint)]
    return ["fit", *config, *rest, *fixed], folder


if __name__ == "__main__":
    main()
