"""A user's own training program whose gradients the test decides, for reports of real local sweeps.

Run as a sweep trial (``--depth=16 --activation=sigmoid --residual=false``), it writes what a Lightning run with
a ``GradientMonitor`` writes: ``$GRADWATCH_ROOT_DIR/$WANDB_RUN_ID/metrics.csv`` in Lightning's CSV layout (sorted
header, one row per logging call, empty cells) and ``hparams.yaml`` with the layer order. Sigmoid or tanh without
residual at depth >= 16 vanishes: the gradient norm falls by half a decade per layer toward the input, and
``health/vanishing`` counts the layers below 1e-6. Everything else is healthy. ``--steps`` rows of training, a
validation row every 10 steps.
"""

import csv
import math
import os
import sys
from pathlib import Path


def layers(depth):
    return ["stem", *(f"blocks.{i}" for i in range(depth)), "head"]


def rows(depth, activation, residual, steps):
    names = layers(depth)
    vanishes = activation in ("sigmoid", "tanh") and not residual and depth >= 16
    for step in range(steps):
        row = {"epoch": step // 10, "step": step, "train/loss": 2.3 / (1 + step / (20 if vanishes else 5))}
        norms = []
        for i, name in enumerate(names):
            decades = (len(names) - 1 - i) * (0.5 if vanishes else 0.02)
            norms.append(0.3 * 10 ** (-decades) * (1 + 0.1 * math.sin(step + i)))
            row[f"grad/norm/{name}"] = norms[-1]
            row[f"param/norm/{name}"] = 1.0 + 0.01 * step
            row[f"grad/update_ratio/{name}"] = 1e-3 * norms[-1] / 0.3
        row["grad/norm_total"] = math.sqrt(sum(n * n for n in norms))
        row["health/attenuation"] = math.log10(norms[0] / norms[-1])
        row["health/vanishing"] = sum(n < 1e-6 for n in norms) if step >= 3 else 0
        row["health/exploding"] = 0
        row["health/nonfinite"] = 0
        yield row
        if step % 10 == 9:
            accuracy = 0.1 if vanishes else 0.9 - 0.01 * depth + (0.05 if residual else 0)
            yield {"epoch": step // 10, "step": step, "val/loss": 2.3 * (1 - accuracy), "val/acc": accuracy}


def main():
    args = dict(arg.removeprefix("--").split("=", 1) for arg in sys.argv[1:])
    depth, activation = int(args["depth"]), args["activation"]
    residual = args.get("residual", "false").lower() == "true"
    run_dir = Path(os.environ["GRADWATCH_ROOT_DIR"]) / os.environ["WANDB_RUN_ID"]
    run_dir.mkdir(parents=True, exist_ok=True)
    all_rows = list(rows(depth, activation, residual, int(args.get("steps", 40))))
    keys = sorted({key for row in all_rows for key in row})
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(all_rows)
    listed = "".join(f"- {name}\n" for name in layers(depth))
    (run_dir / "hparams.yaml").write_text(f"depth: {depth}\nactivation: {activation}\ngradwatch/layers:\n{listed}")


if __name__ == "__main__":
    main()
