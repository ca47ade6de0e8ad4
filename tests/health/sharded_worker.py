"""One process of the sharded-statistics test: the same model whole, and cut into this process's pieces.

Run by ``test_distributed.py`` with ``torch.multiprocessing`` on 2 processes (gloo). Every process builds the same
model and gradients, measures them whole (the reference), then measures only its pieces, laid out two ways:

- **FSDP1** (``use_orig_params=True``): each parameter a flat slice of the whole, possibly empty, as plain tensors
  over the default group;
- **FSDP2**: ``DTensor`` s sharded on dim 0 of a 1-d mesh, one of them replicated (``Replicate``).

It writes both measurements, the collectives each issued and the guard's answers to ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from collectives import Collectives
from gradwatch.health import GradientStatistics, Layer, find_layers
from gradwatch.health.distributed import Sharding


def model_with_gradients() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3), nn.LayerNorm(3))
    model(torch.randn(8, 6)).pow(2).mean().backward()
    return model


def as_dict(m: Any) -> dict[str, Any]:
    return {
        "names": list(m.names),
        "grad_norm": m.grad_norm.tolist(),
        "param_norm": m.param_norm.tolist(),
        "update_norm": None if m.update_norm is None else m.update_norm.tolist(),
        "nonfinite": m.nonfinite.tolist(),
        "histograms": None if m.histograms is None else m.histograms.tolist(),
    }


def flat_pieces(model: nn.Module, rank: int, world: int) -> list[Layer]:
    """FSDP1's layout: each parameter's flat slice ``rank`` of ``world`` (the last ones may be empty)."""
    layers = []
    for layer in find_layers(model):
        pieces = []
        for p in layer.params:
            flat = p.detach().flatten()
            size = math.ceil(flat.numel() / world)
            piece = nn.Parameter(flat[rank * size : (rank + 1) * size].clone())
            piece.grad = p.grad.flatten()[rank * size : (rank + 1) * size].clone()
            pieces.append(piece)
        layers.append(Layer(layer.name, tuple(pieces)))
    return layers


def dtensor_pieces(model: nn.Module) -> list[Layer]:
    """FSDP2's layout: DTensors sharded on dim 0, except the last layer norm's weight, replicated."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    layers = []
    for layer in find_layers(model):
        pieces = []
        for p in layer.params:
            placement = [Replicate()] if p is model[3].weight else [Shard(0)]
            piece = nn.Parameter(distribute_tensor(p.detach().clone(), mesh, placement))
            piece.grad = distribute_tensor(p.grad.clone(), mesh, placement)
            pieces.append(piece)
        layers.append(Layer(layer.name, tuple(pieces)))
    return layers


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def measure_pieces(layers: list[Layer], sharding: Sharding) -> dict[str, Any]:
    """Snapshot, an SGD step on the pieces, then measure; also the magnitudes, a NaN, and the guard."""
    stats = GradientStatistics(layers, histograms=True, sharding=sharding)
    result: dict[str, Any] = {"sharded": sharding.sharded}
    stats.snapshot()
    with torch.no_grad():
        for p in stats.params:
            local(p).sub_(0.1 * local(p.grad))
    with Collectives() as counter:
        result["measurement"] = as_dict(stats.measure())
    result["measure_collectives"] = counter.ops
    with Collectives() as counter:
        mean, peak = stats.magnitudes()
    result["magnitudes"] = [mean.tolist(), peak.tolist()]
    result["magnitude_collectives"] = counter.ops
    result["finite_before"] = stats.finite()
    if dist.get_rank() == 1:  # a NaN in this process's piece of the first layer's weight gradient only
        local(stats.params[0].grad).view(-1)[0] = float("nan")
    result["finite_after"] = stats.finite()
    result["nan_measurement"] = as_dict(stats.measure())
    return result


def refused_layouts() -> dict[str, str]:
    """What ``Sharding.of`` says of layouts it cannot measure whole: a Partial placement, two meshes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Partial, Shard, distribute_tensor

    from gradwatch.errors import ConfigError

    first = init_device_mesh("cpu", (dist.get_world_size(),))
    second = init_device_mesh("cpu", (1, dist.get_world_size()))
    layouts = {
        "partial": [nn.Parameter(distribute_tensor(torch.ones(4), first, [Partial()]))],
        "two meshes": [
            nn.Parameter(distribute_tensor(torch.ones(4), first, [Shard(0)])),
            nn.Parameter(distribute_tensor(torch.ones(4), second, [Shard(0), Shard(0)])),
        ],
    }
    said = {}
    for name, params in layouts.items():
        try:
            Sharding.of(params)
            said[name] = "accepted"
        except ConfigError as err:
            said[name] = str(err)
    return said


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = model_with_gradients()
        whole = GradientStatistics(find_layers(model), histograms=True)
        whole.snapshot()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.1 * p.grad)
        reference = {"measurement": as_dict(whole.measure())}
        mean, peak = whole.magnitudes()
        reference["magnitudes"] = [mean.tolist(), peak.tolist()]
        model = model_with_gradients()  # the pieces are cut from the weights before the step
        flat = flat_pieces(model, rank, world)
        fsdp1 = measure_pieces(flat, Sharding([p for layer in flat for p in layer.params], dist.group.WORLD))
        dtensors = dtensor_pieces(model)
        fsdp2 = measure_pieces(dtensors, Sharding.of([p for layer in dtensors for p in layer.params]))
        record = {"reference": reference, "fsdp1": fsdp1, "fsdp2": fsdp2, "refused": refused_layouts()}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()
