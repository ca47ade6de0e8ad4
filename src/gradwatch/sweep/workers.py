"""How parallel trials share the machine: one GPU each when there are GPUs, else an equal share of the cores."""

from __future__ import annotations

import os
from pathlib import Path


def visible_gpus() -> list[str]:
    """The GPUs trials may use: ``CUDA_VISIBLE_DEVICES`` when set, else those the NVIDIA driver lists.

    Read without importing torch (seconds) or initializing CUDA in the controller.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(len(list(Path("/proc/driver/nvidia/gpus").glob("*"))))]


def worker_env(slot: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """Environment for the trial in worker ``slot`` of ``workers``.

    With GPUs, ``CUDA_VISIBLE_DEVICES`` names one (round robin over ``gpus``). Without, ``OMP_NUM_THREADS`` gives each
    worker ``cores / workers`` threads, so K workers do not each start one thread per core; a value the user set
    is kept.
    """
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
