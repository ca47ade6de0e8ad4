"""Name → factory registries: the one place a config string becomes a layer (timm's ``create_act`` pattern)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gradwatch.errors import ConfigError, unknown_choice

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps names to factories; non-string values (classes, ``functools.partial``) pass through unchanged.

    Args:
        kind: What the registry holds, for error messages (``"activation"``).
        entries: The built-in names and their factories.

    Example::

        >>> from torch import nn
        >>> shapes = Registry("shape", {"square": nn.Identity})
        >>> shapes.get("square")
        <class 'torch.nn.modules.linear.Identity'>

    """

    def __init__(self, kind: str, entries: dict[str, T]) -> None:
        self.kind = kind
        self._entries: dict[str, T] = dict(entries)

    def register(self, name: str, factory: T) -> T:
        """Add ``factory`` under ``name``; a name already taken is refused (torchvision's ``register_model``).

        Returns ``factory`` so that this works as a decorator through :func:`functools.partial`.

        Raises:
            ValueError: ``name`` is already registered.

        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = factory
        return factory

    def unregister(self, name: str) -> None:
        """Remove a user registration (tests and notebooks re-register)."""
        del self._entries[name]

    def get(self, value: str | T, *, param: str | None = None) -> T:
        """Resolve a registered name or a dotted import path (``"torch.nn.Mish"``); a callable is returned as is.

        Raises:
            ConfigError: ``value`` is neither a registered name nor an importable callable (the message lists the
                registered names).
        """
        if not isinstance(value, str):
            if not callable(value):
                raise ConfigError(f"{self.kind} must be a name or a callable, got {value!r}", param=param)
            return value
        if value in self._entries:
            return self._entries[value]
        if "." in value:
            return self._import(value, param)
        raise ConfigError(unknown_choice(self.kind, value, self._entries), param=param)

    def _import(self, path: str, param: str | None) -> T:
        # Lets the command line name any class, as LightningCLI's class_path does, without registering it first.
        module_name, _, attr = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            message = f"{self.kind} {path!r} is neither registered ({', '.join(sorted(self._entries))}) nor importable"
            raise ConfigError(f"{message}: {err}", param=param) from None
        if not callable(found):
            raise ConfigError(f"{self.kind} {path!r} is not callable", param=param)
        return found

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
