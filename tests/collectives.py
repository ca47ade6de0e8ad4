"""Count the collectives code issues, independently of gradwatch: a dispatch mode that sees every ``c10d`` op."""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class Collectives(TorchDispatchMode):
    """Records the ``c10d`` collectives dispatched while active (all-reduce, all-gather, broadcast...).

    Example: ``with Collectives() as seen: ...`` then ``seen.ops == ["c10d.allreduce_.default"]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if "c10d" in str(func):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
