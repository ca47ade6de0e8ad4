"""Type aliases shared by the layer factories."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

#: A layer given by registry name, by class, or by any callable that returns a module (``functools.partial``).
LayerType = str | Callable[..., nn.Module] | type[nn.Module]
