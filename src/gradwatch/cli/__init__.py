"""Every ``gradwatch`` command line, the top floor: it imports the engines, and nothing imports it.

- ``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI (:mod:`gradwatch.cli.fit`);
- ``sweep run|agent`` (:mod:`gradwatch.cli.sweep`, with the parameter check against ``fit``'s parser in
  :mod:`gradwatch.cli.check`), ``report`` (:mod:`gradwatch.cli.report`), ``dashboard``
  (:mod:`gradwatch.cli.dashboard`), ``replay`` (:mod:`gradwatch.cli.replay`).

``sweep``, ``report`` and ``dashboard`` never import Lightning: dispatching here lets ``gradwatch sweep`` reject a
bad file in a fraction of a second, keeps the controller's own start-up short, and lets ``gradwatch report`` run
without torch. This module imports nothing at the top for the same reason.
"""

from __future__ import annotations

import atexit
import difflib
import os
import sys
import threading

#: Every command, with the line ``gradwatch`` and ``gradwatch --help`` print for it.
COMMANDS = {
    "fit": "train a model (LightningCLI: --model CNN --data DigitsDataModule --model.depth 16 ...)",
    "validate": "validate a model or a checkpoint",
    "test": "test a model or a checkpoint",
    "predict": "predict with a model or a checkpoint (writes predictions.pt into the run folder)",
    "sweep": "run a W&B sweep file: `sweep run FILE` (online, or locally on Optuna), `sweep agent ID`",
    "report": "write one self-contained HTML page of gradient health for runs and local sweeps",
    "dashboard": "build a W&B workspace of gradient health and save it (or write its spec with --dry-run)",
    "replay": "re-run the step a run's gradients first went non-finite at (nonfinite-step<N>.pt) and say where",
}


def overview() -> str:
    """What bare ``gradwatch`` and ``gradwatch --help`` print: every command in a line."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: gradwatch COMMAND [ARGS]   (gradwatch COMMAND --help for its options)\n\ncommands:\n" + "\n".join(
        lines
    )


def main(args: list[str] | None = None) -> None:
    """Run the ``gradwatch`` command with ``args`` (``sys.argv[1:]`` when ``None``)."""
    argv = sys.argv[1:] if args is None else list(args)
    # As `python -m gradwatch` does: a user's own classes beside their configs (`--model mypackage.MyCNN`) import.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        raise SystemExit(0 if argv else 2)
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"gradwatch: error: unknown command {argv[0]!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    if argv[0] == "sweep":
        from gradwatch.cli.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv[0] == "report":
        from gradwatch.cli.report import main as report_main

        return report_main(argv[1:])
    if argv[0] == "dashboard":
        from gradwatch.cli.dashboard import main as dashboard_main

        return dashboard_main(argv[1:])
    if argv[0] == "replay":
        from gradwatch.cli.replay import main as replay_main

        return replay_main(argv[1:])
    from gradwatch.cli.fit import main as lightning_main

    return lightning_main(args)


def run() -> None:
    """The ``gradwatch`` program (and ``python -m gradwatch``): :func:`main`, then a quick exit.

    A run leaves torch, Lightning and W&B loaded, and the interpreter takes about a second to tear their modules
    down at exit: a second of every sweep trial. Everything that a normal exit does for the program's output is
    done here first (non-daemon threads joined, ``atexit`` handlers run: W&B's service teardown, the logging
    handlers' flush, multiprocessing's workers), then the process ends with :func:`main`'s status.
    """
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if "torch" not in sys.modules:  # nothing heavy loaded (sweep, report): the usual exit is quick
        raise SystemExit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # as the interpreter does with `sys.exit("message")`
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
