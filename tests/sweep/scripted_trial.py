"""A user's own training program, as a sweep trial: it logs ``val/loss`` into gradwatch's CSV layout.

It writes ``$GRADWATCH_ROOT_DIR/$WANDB_RUN_ID/metrics.csv`` one row per step (``val/loss = x + 1 / (step + 1)``,
or ``10 * x`` when ``--bad=True``), sleeping ``--sleep`` seconds per step, and records its argv, environment and pid
in ``trial.json``. SIGTERM ends it cleanly, as Lightning's ``fit`` does, and leaves ``terminated`` behind.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

args = dict(arg.removeprefix("--").split("=", 1) for arg in sys.argv[1:])
run_dir = Path(os.environ["GRADWATCH_ROOT_DIR"]) / os.environ["WANDB_RUN_ID"]
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "trial.json").write_text(json.dumps({"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid()}))
stop = False


def on_sigterm(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_sigterm)
x, steps, pause = float(args["x"]), int(args.get("steps", 5)), float(args.get("sleep", 0.2))
bad = args.get("bad") == "True"
with (run_dir / "metrics.csv").open("w") as f:
    f.write("step,val/loss,health/vanishing,health/attenuation\n")
    for step in range(steps):
        if stop:
            (run_dir / "terminated").touch()
            break
        loss = 10 * x if bad else x + 1 / (step + 1)
        f.write(f"{step},{loss},{int(bad) * 3},{-step * 0.5}\n")
        f.flush()
        time.sleep(pause)
sys.exit(int(args.get("exit", 0)))
