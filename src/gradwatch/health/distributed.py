"""Statistics of sharded parameters as if they were whole: how a group of parameters is spread over processes.

Under DDP every process holds whole parameters and the same averaged gradients, so its statistics are already the
global ones and nothing is communicated. Under sharded training each process holds a piece of every parameter:

- FSDP2 (``fully_shard``, Lightning's ``ModelParallelStrategy``): parameters and gradients are ``DTensor`` s; the
  local piece is ``.to_local()``, and a mesh dimension either shards them (``Shard``) or copies them
  (``Replicate``, as HSDP's replica dimension or tensor parallelism's unsharded norms);
- FSDP1 with ``use_orig_params=True`` (Lightning's ``FSDPStrategy``): parameters are plain tensors viewing this
  process's slice of a flat buffer, possibly empty, across the FSDP module's process group.

A squared norm is a sum over elements, so the whole tensor's squared norm is the sum of the pieces' squared norms.
:class:`Sharding` scales each piece by ``1 / copies`` (the processes holding the same elements) and sums the packed
vector of all of them with **one** all-reduce. Counts (non-finite elements, histogram bins) sum the same way.

Every collective here is reached by every process of the group or by none: callers decide when to measure from
values every process agrees on (step counts, reduced norms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradwatch.errors import ConfigError


class Sharding:
    """How a group of parameters is spread over processes, and the one collective that makes local sums global.

    Args:
        params: The parameters, in the order the packed statistics use.
        group: The process group their pieces are spread over; ``None`` when every process holds them whole.
        copies: For each parameter, how many processes of ``group`` hold each of its elements.

    Example::

        >>> sharding = Sharding.of([nn.Parameter(torch.ones(3))])  # one process: nothing to reduce
        >>> sharding.sharded, sharding.local(torch.ones(2)).shape
        (False, torch.Size([2]))
    """

    def __init__(self, params: Sequence[torch.Tensor], group: Any = None, copies: Sequence[int] | None = None) -> None:
        self.params = list(params)
        self.group = group
        self._copies = list(copies) if copies is not None else [1] * len(self.params)
        self._scale: torch.Tensor | None = None

    @property
    def sharded(self) -> bool:
        """Whether statistics must be summed over processes."""
        return self.group is not None

    @classmethod
    def of(cls, params: Sequence[nn.Parameter], model: nn.Module | None = None) -> Sharding:
        """The sharding of ``params`` (one optimizer's), as FSDP2 or FSDP1 laid them out.

        Args:
            params: The parameters.
            model: The outermost module (FSDP1's wrappers are looked for among its modules).

        Raises:
            ConfigError: parameters that cannot be measured whole: ``DTensor`` s on different meshes, partial
                (unreduced) placements, FSDP1 hybrid sharding.
        """
        from torch.distributed.tensor import DTensor

        dtensors = [p for p in params if isinstance(p, DTensor)]
        if dtensors:
            return cls._of_dtensors(params, dtensors)
        return cls(params, _fsdp1_group(model, params) if model is not None else None)

    @classmethod
    def _of_dtensors(cls, params: Sequence[nn.Parameter], dtensors: list[Any]) -> Sharding:
        from torch.distributed.tensor import DTensor, Partial, Replicate

        meshes = {p.device_mesh for p in dtensors}  # equal meshes (the same ranks and shape) are one
        if len(meshes) > 1:
            raise ConfigError(
                "parameters on several device meshes: gradwatch sums sharded statistics over one"
                " mesh; give each mesh's parameters their own optimizer"
            )
        (mesh,) = meshes
        if any(isinstance(placement, Partial) for p in dtensors for placement in p.placements):
            raise ConfigError("a parameter with a Partial placement (unreduced values) has no norm to measure")
        if mesh.ndim == 1:
            group = mesh.get_group()
        elif mesh.size() == dist.get_world_size():
            group = dist.group.WORLD
        else:
            raise ConfigError(f"a {mesh.ndim}-d device mesh over part of the processes is not supported: {mesh}")
        size = mesh.size()
        copies = []
        for p in params:
            if isinstance(p, DTensor):
                copies.append(
                    math.prod(mesh.size(dim) for dim, pl in enumerate(p.placements) if isinstance(pl, Replicate))
                )
            else:  # a plain parameter next to sharded ones: every process of the mesh holds it whole
                copies.append(size)
        return cls(params, group, copies)

    @staticmethod
    def local(tensor: torch.Tensor) -> torch.Tensor:
        """This process's piece of ``tensor`` (the tensor itself unless it is a ``DTensor``)."""
        to_local = getattr(tensor, "to_local", None)
        return to_local() if to_local is not None else tensor

    def scale(self, device: torch.device) -> torch.Tensor:
        """``1 / copies`` per parameter, on ``device`` (made once)."""
        if self._scale is None or self._scale.device != device:
            self._scale = torch.tensor([1.0 / c for c in self._copies], dtype=torch.float32, device=device)
        return self._scale

    def sum(self, packed: torch.Tensor) -> torch.Tensor:
        """Sum ``packed`` over the group's processes, in place: the one collective of a measurement."""
        if self.group is not None:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group)
        return packed

    def gather(self, packed: torch.Tensor) -> torch.Tensor:
        """Every process's ``packed`` (same size everywhere), stacked ``(processes, n)``; one collective."""
        return all_gather(packed, self.group) if self.group is not None else packed.unsqueeze(0)


def check_measurable(params: Sequence[nn.Parameter]) -> None:
    """Refuse parameters whose per-layer norms cannot be measured.

    Raises:
        ConfigError: FSDP1 flat parameters (``use_orig_params=False``), which merge many layers into one tensor.
    """
    if any(getattr(p, "_is_flat_param", False) for p in params):  # what `isinstance(p, FlatParameter)` checks
        raise ConfigError(
            "FSDP flat parameters merge many layers into one tensor: create the strategy with use_orig_params=True"
            " (Lightning: FSDPStrategy(use_orig_params=True)), or use FSDP2 (ModelParallelStrategy)"
        )


def _fsdp1_group(model: nn.Module, params: Sequence[nn.Parameter]) -> Any:
    """FSDP1's process group when it shards ``params`` (``use_orig_params=True`` views), else ``None``.

    FSDP1 marks the original parameters it flattened; their process group and sharding strategy are the wrappers'
    (found among ``model``'s modules: pass the outermost one, which Lightning's FSDPStrategy puts around the
    LightningModule).

    Raises:
        ConfigError: hybrid sharding (pieces spread over two groups at once).
    """
    if not any(getattr(p, "_fsdp_flattened", False) for p in params):
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    wrappers = [m for m in model.modules() if isinstance(m, FullyShardedDataParallel)]
    strategies = {m.sharding_strategy for m in wrappers}
    if strategies and strategies <= {ShardingStrategy.NO_SHARD}:
        return None
    if strategies & {ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2}:
        raise ConfigError("FSDP1 hybrid sharding is not supported: use FSDP2 (fully_shard with a 2-d mesh)")
    return wrappers[0].process_group if wrappers else dist.group.WORLD


def unsharded_aliases(model: nn.Module) -> dict[int, int]:
    """``id`` of each FSDP2 unsharded parameter → ``id`` of the sharded parameter the module registers.

    FSDP2 runs the forward pass on unsharded copies, so the autograd graph holds those and not the parameters the
    optimizer steps. Empty for models without ``fully_shard``, and before the first forward pass. FSDP2 keeps this
    mapping in private state; should it move, layers fall back to registration order.
    """
    aliases = {}
    for module in model.modules():
        get_state = getattr(module, "_get_fsdp_state", None)
        if get_state is None:
            continue
        state = get_state()
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:
            group = getattr(state, "_fsdp_param_group", None)
            groups = [group] if group is not None else []
        for param_group in groups:
            for fsdp_param in param_group.fsdp_params:
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if unsharded is not None:
                    aliases[id(unsharded)] = id(fsdp_param.sharded_param)
    return aliases


def all_gather(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Every process's ``tensor`` (1-d, same size everywhere) stacked ``(processes, n)``; one collective.

    ``group=None`` is the default group, all processes.
    """
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def process_count() -> int:
    """Processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_process(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a 0-d tensor) is true on any process; one all-reduce when there are several."""
    if process_count() > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
