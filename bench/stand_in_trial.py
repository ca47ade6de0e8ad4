"""A stand-in for ``gradwatch fit`` in a sweep trial, for ``sweep_controller.py``: no training, standard library only.

It takes the ``--name=value`` arguments the engine passes (``${args}``) and writes a ``metrics.csv`` shaped like
``gradwatch fit``'s on the digits, one epoch at a time, into ``$GRADWATCH_ROOT_DIR/$WANDB_RUN_ID/`` (the run folder
the engine gives a trial), sleeping ``--stand_in.epoch_seconds`` between epochs so the pruner can act. Its
``val/acc`` rises towards a smooth function of the parameters plus noise seeded by the run id. It exits 0 after
``--trainer.max_epochs`` epochs, and on SIGTERM (the engine's way of stopping a pruned trial), as Lightning does.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any


def parse(argv: list[str]) -> dict[str, Any]:
    """``--name=value`` words as a mapping; values as Python literals where they are numbers or booleans."""
    params: dict[str, Any] = {}
    for word in argv:
        name, _, text = word.removeprefix("--").partition("=")
        value: Any = text
        if text in ("True", "False"):
            value = text == "True"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    pass
        params[name] = value
    return params


def synthetic_acc(params: dict[str, Any], seed: str) -> float:
    """A smooth function of the parameters plus seeded noise: deep sigmoid nets without help do badly."""
    rng = random.Random(seed)
    depth, lr = params.get("model.depth", 8), params.get("model.optimizer.lr", 3e-3)
    acc = 0.97 - 0.04 * (math.log10(lr) + 2.5) ** 2
    if params.get("model.activation") in ("sigmoid", "tanh") and params.get("model.norm") == "none":
        acc -= 0.02 * depth / (2.0 if params.get("model.residual") else 1.0)
    acc -= 0.002 * abs(depth - 8) + (0.01 if params.get("model.init") == "default" else 0.0)
    return min(1.0, max(0.05, acc + rng.gauss(0.0, 0.01)))


def metrics_csv(acc: float, epochs: int, total: int, layers: int = 9, steps: int = 23) -> str:
    """``metrics.csv`` after ``epochs`` of ``total`` epochs, shaped like ``gradwatch fit``'s on the digits.

    Train rows every 10 steps, a gradient-monitor row every 50 (``grad/*`` per layer, ``health/*``) and one
    ``val/acc`` row per epoch, rising towards ``acc`` at the last epoch.
    """
    grad = [f"grad/layer{i}/{stat}" for i in range(layers) for stat in ("norm", "rms", "update_ratio")]
    health = ["health/vanishing", "health/exploding", "health/nonfinite", "health/attenuation"]
    columns = ["epoch", "step", "train/acc", "train/loss", "val/acc", "val/loss", *health, *grad]
    rows: list[dict[str, float]] = []
    for epoch in range(epochs):
        frac = (epoch + 1) / total
        for step in range(epoch * steps, (epoch + 1) * steps):
            if step % 10 == 9:
                rows.append({"epoch": epoch, "step": step, "train/acc": acc * frac, "train/loss": 2.3 * (1 - frac)})
            if step % 50 == 0:
                row: dict[str, float] = {"epoch": epoch, "step": step}
                row.update({key: 0.01 * (i + 1) for i, key in enumerate(grad)})
                row.update({"health/vanishing": 0, "health/exploding": 0, "health/nonfinite": 0})
                row["health/attenuation"] = 1.5
                rows.append(row)
        val = acc * (0.8 + 0.2 * frac)
        rows.append({"epoch": epoch, "step": (epoch + 1) * steps - 1, "val/acc": val, "val/loss": 1 - val})
    lines = [",".join(columns)]
    lines += [",".join("" if row.get(c) is None else repr(row[c]) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    params = parse(argv)
    run_id = os.environ["WANDB_RUN_ID"]
    run_dir = Path(os.environ["GRADWATCH_ROOT_DIR"]) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(params.get("trainer.max_epochs", 15))
    pause = float(params.get("stand_in.epoch_seconds", 0.1))
    acc = synthetic_acc(params, run_id)
    for epoch in range(1, epochs + 1):
        time.sleep(pause)
        partial = run_dir / "metrics.csv.partial"  # whole or not at all: the controller reads it meanwhile
        partial.write_text(metrics_csv(acc, epoch, epochs))
        os.replace(partial, run_dir / "metrics.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
