"""Type aliases shared by the layer factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A layer given by registry name, by import path (``"torch.nn.Mish"``), or by any callable that returns a module:
#: a class or a ``functools.partial``. The callable's return type stays ``Any`` on purpose: with ``nn.Module`` there
#: (or ``type[nn.Module]``), the CLI's ``--help`` lists every module class torch has under each such argument.
LayerType = str | Callable[..., Any]
