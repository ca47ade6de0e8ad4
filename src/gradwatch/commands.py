"""The ``gradwatch`` command: ``fit`` / ``validate`` / ``test`` through LightningCLI, the rest in a light process.

``sweep``, ``report`` and ``dashboard`` never import Lightning: dispatching here lets ``gradwatch sweep`` reject a
bad file in a fraction of a second, keeps the controller's own start-up short, and lets ``gradwatch report`` run
without torch.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    """Run the ``gradwatch`` command with ``args`` (``sys.argv[1:]`` when ``None``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["sweep"]:
        from gradwatch.sweep.cli import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["report"]:
        from gradwatch.report.cli import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["dashboard"]:
        from gradwatch.report.dashboard import main as dashboard_main

        return dashboard_main(argv[1:])
    from gradwatch.cli import main as lightning_main

    return lightning_main(args)


if __name__ == "__main__":
    main()
