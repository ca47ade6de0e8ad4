"""A user's own training program, as a sweep trial: it logs ``val/loss`` into gradwatch's CSV layout.

It writes ``$GRADWATCH_ROOT_DIR/$WANDB_RUN_ID/metrics.csv`` one row per step (``val/loss = x + 1 / (step + 1)``,
the attenuation falling by half a decade per step), sleeping ``--sleep`` seconds per step, and records its argv,
environment and pid in ``trial.json``. SIGTERM ends it cleanly, as Lightning's ``fit`` does, leaving ``terminated``.

``--preempt=N`` plays a preempted ``gradwatch fit``: its first N attempts (``always``: every one) stop after one
step, leaving ``checkpoints/preempted.ckpt``, and exit 143. An attempt run with ``$GRADWATCH_RESUME`` continues the
steps in ``metrics.csv``. Each attempt appends its run id and ``$GRADWATCH_RESUME`` to ``attempts.jsonl``.
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
    resume = os.environ.get("GRADWATCH_RESUME")
    with (run_dir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps({"run_id": os.environ["WANDB_RUN_ID"], "resume": resume}) + "\n")
    attempt = len((run_dir / "attempts.jsonl").read_text().splitlines())
    preempt = args.get("preempt", "0")
    preempted = preempt == "always" or attempt <= int(preempt)
    signal.signal(signal.SIGTERM, on_sigterm)
    x, steps, pause = float(args["x"]), int(args.get("steps", 5)), float(args.get("sleep", 0.2))
    metrics = run_dir / "metrics.csv"
    done = len(metrics.read_text().splitlines()) - 1 if resume and metrics.exists() else 0
    with metrics.open("a" if done else "w") as f:
        if not done:
            f.write("step,val/loss,health/vanishing,health/attenuation\n")
        for step in range(done, steps):
            if stop:
                (run_dir / "terminated").touch()
                break
            f.write(f"{step},{x + 1 / (step + 1)},0,{-step * 0.5}\n")
            f.flush()
            if preempted:
                (run_dir / "checkpoints").mkdir(exist_ok=True)
                (run_dir / "checkpoints" / "preempted.ckpt").write_text(f"step {step}\n")
                sys.exit(143)
            time.sleep(pause)
    sys.exit(int(args.get("exit", 0)))  # --exit=N: a trial that fails


if __name__ == "__main__":
    main()
