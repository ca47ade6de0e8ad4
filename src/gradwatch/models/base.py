"""What every gradwatch LightningModule shares: shapes read from the DataModule and lazy building."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from gradwatch.errors import ConfigError


class GradwatchModule(pl.LightningModule):
    """Base of :class:`~gradwatch.CNN`, :class:`~gradwatch.RNN` and :class:`~gradwatch.GAN`.

    Shapes (channels, classes, sizes) may be left ``None``: :meth:`setup` reads them from the DataModule and
    writes them into ``hparams``, so checkpoints carry them. Networks are built by :meth:`build` (called from
    ``__init__`` when every shape is known, else from ``configure_model``), which subclasses implement from
    their overridable ``build_*`` methods.

    Subclasses declare which shapes they read: ``data_shapes`` maps an argument name to
    ``(DataModule attribute, transform)``; ``data_kind`` names what the DataModule must provide.
    """

    data_shapes: dict[str, tuple[str, Callable[[Any], Any]]] = {}
    #: Shapes a DataModule may leave out, with the value they take then; the networks must not depend on them.
    data_defaults: dict[str, Any] = {}
    data_kind: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._built = False

    def shapes_known(self) -> bool:
        """Whether every shape argument has a value."""
        return all(self.hparams.get(param) is not None or param in self.data_defaults for param in self.data_shapes)

    def build(self) -> None:
        """Create the networks and metrics from ``hparams``. Called once."""
        raise NotImplementedError

    def logged_metrics(self) -> list[str]:
        """The metric keys this module logs once its shapes are known (``check_data``).

        Sweeps check ``metric.name`` against them before the first trial; a subclass that logs more keys adds them.
        """
        raise NotImplementedError

    def _build_once(self) -> None:
        if not self._built:
            self.build()
            self._built = True

    def require_built(self) -> None:
        """Build the networks if they can be, else say in one line what they wait for.

        A model made in a notebook without its shapes has no networks until a Trainer (or :meth:`check_data` then
        ``configure_model``) reads them from the data.

        Raises:
            RuntimeError: a shape is still unknown; the message names it.
        """
        if self._built:
            return
        missing = [p for p in self.data_shapes if self.hparams.get(p) is None and p not in self.data_defaults]
        if missing:
            name = type(self).__name__
            raise RuntimeError(
                f"{name} has no networks yet: they are built once {', '.join(missing)} are known; pass them "
                f"({name}({', '.join(f'{p}=...' for p in missing)})) or fit it with a DataModule first"
            )
        self._build_once()

    def check_data(self, datamodule: pl.LightningDataModule | None) -> None:
        """Read unknown shapes from ``datamodule``, check the given ones against it, then have it load its data.

        ``setup`` calls this; the CLI calls it before the Trainer starts, so a mismatch, a damaged file or a split
        the data cannot satisfy fails before any logger creates a run. The data is loaded by the DataModule's
        ``verify_data`` (gradwatch's DataModules have one; others are loaded by Lightning as usual), once: the
        Trainer's ``setup`` reuses it.

        Raises:
            ConfigError: a given shape contradicts the data, the DataModule provides the wrong kind of data, a
                shape is neither given nor provided, or the data cannot be used as configured.
        """
        shapes = {
            param: self._shape_from_data(param, datamodule, *source) for param, source in self.data_shapes.items()
        }
        # Through `save_hyperparameters`, so the loggers (which log `hparams_initial`) and checkpoints get the values.
        self.save_hyperparameters({**self.hparams, **shapes})
        verify = getattr(datamodule, "verify_data", None)
        if callable(verify):
            verify()

    @override
    def setup(self, stage: str) -> None:
        self.check_data(getattr(self.trainer, "datamodule", None))

    @override
    def configure_model(self) -> None:
        self._build_once()

    def _shape_from_data(
        self, param: str, datamodule: pl.LightningDataModule | None, attr: str, transform: Callable[[Any], Any]
    ) -> Any:
        name = type(self).__name__
        given = self.hparams.get(param)
        if param in self.data_defaults and not hasattr(datamodule, attr):
            return given if given is not None else self.data_defaults[param]
        if datamodule is not None and not hasattr(datamodule, attr):
            raise ConfigError(
                f"{name} needs {self.data_kind}, and {type(datamodule).__name__} provides none (it has no `{attr}`)",
                param=param,
            )
        found = getattr(datamodule, attr, None)
        found = transform(found) if found is not None else None
        if given is not None and found is not None and given != found:
            raise ConfigError(
                f"{name}({param}={given!r}) contradicts {type(datamodule).__name__}, whose data has {param}={found!r};"
                f" leave {param} unset to take it from the data",
                param=param,
            )
        if given is None and found is None:
            raise ConfigError(
                f"{name}: {param} is unknown; pass it, or fit with a DataModule that defines `{attr}`", param=param
            )
        return given if given is not None else found
