"""A user's own training program, as a sweep trial: it logs ``val/loss`` into gradwatch's CSV layout.

It writes ``$GRADWATCH_ROOT_DIR/$WANDB_RUN_ID/metrics.csv`` one row per step (``val/loss = x + 1 / (step + 1)``,
the attenuation falling by half a decade per step), sleeping ``--sleep`` seconds per step, and records its argv,
environment and pid in ``trial.json``. SIGTERM ends it cleanly, as Lightning's ``fit`` does, leaving ``terminated``.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

stop = False


def on_sigterm(signum, frame):
    global stop
    stop = True


def main():
    args = dict(arg.removeprefix("--").split("=", 1) for arg in sys.argv[1:])
    run_dir = Path(os.environ["GRADWATCH_ROOT_DIR"]) / os.environ["WANDB_RUN_ID"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "trial.json").write_text(json.dumps({"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid()}))
    signal.signal(signal.SIGTERM, on_sigterm)
    x, steps, pause = float(args["x"]), int(args.get("steps", 5)), float(args.get("sleep", 0.2))
    with (run_dir / "metrics.csv").open("w") as f:
        f.write("step,val/loss,health/vanishing,health/attenuation\n")
        for step in range(steps):
            if stop:
                (run_dir / "terminated").touch()
                break
            f.write(f"{step},{x + 1 / (step + 1)},0,{-step * 0.5}\n")
            f.flush()
            time.sleep(pause)
    sys.exit(int(args.get("exit", 0)))  # --exit=N: a trial that fails


if __name__ == "__main__":
    main()
