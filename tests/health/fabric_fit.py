"""A Fabric user's loop with the trainer-free GradientTracker, FSDP2 on 2 CPU processes or one plain process.

Run as a script (``python tests/health/fabric_fit.py --devices 2 --out DIR``): Fabric launches the second process.
Both train the same small MLP on the same fixed global batches (each FSDP2 process takes half of each batch, so the
averaged gradients are the single process's) and write what the tracker measured to ``DIR/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from lightning.fabric import Fabric
from torch import nn

from gradwatch.health.tracker import GradientTracker, TrackerConfig

torch.set_num_threads(1)
STEPS = 4


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def shard(module: nn.Module, device_mesh) -> nn.Module:
    """The user's parallelization: ``fully_shard`` each linear layer, then the whole model."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"]
    for layer in module:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def run(out: Path, devices: int) -> None:
    if devices > 1:
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(parallelize_fn=shard, data_parallel_size=devices, tensor_parallel_size=1)
        fabric = Fabric(accelerator="cpu", devices=devices, strategy=strategy)
    else:
        fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    net = fabric.setup_module(model())
    optimizer = fabric.setup_optimizers(torch.optim.SGD(net.parameters(), lr=0.1))
    tracker = GradientTracker(net, TrackerConfig(every=1))
    tracker.watch(optimizer)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 8, generator=generator), torch.randint(0, 4, (32,), generator=generator))] * STEPS
    for step, (x, y) in enumerate(data):
        x, y = x[fabric.global_rank :: devices], y[fabric.global_rank :: devices]  # this process's half
        loss = nn.functional.cross_entropy(net(x), y)
        tracker.observe(loss)
        fabric.backward(loss)
        report = tracker.step(optimizer, step=step)
        assert report is not None
        optimizer.step()
        optimizer.zero_grad()
    (group,) = tracker.groups
    record = {"layers": list(group.names), "history": group.history, "metrics": tracker.metrics(report)}
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    run(args.out, args.devices)


if __name__ == "__main__":
    main()
