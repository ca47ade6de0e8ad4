"""Every ``gradwatch`` command line, the top floor: it imports the engines, and nothing imports it.

- ``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI (:mod:`gradwatch.cli.fit`);
- ``sweep run|agent`` (:mod:`gradwatch.cli.sweep`, with the parameter check against ``fit``'s parser in
  :mod:`gradwatch.cli.check`), ``report`` (:mod:`gradwatch.cli.report`), ``dashboard``
  (:mod:`gradwatch.cli.dashboard`).

``sweep``, ``report`` and ``dashboard`` never import Lightning: dispatching here lets ``gradwatch sweep`` reject a
bad file in a fraction of a second, keeps the controller's own start-up short, and lets ``gradwatch report`` run
without torch. This module imports nothing at the top for the same reason.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    """Run the ``gradwatch`` command with ``args`` (``sys.argv[1:]`` when ``None``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["sweep"]:
        from gradwatch.cli.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["report"]:
        from gradwatch.cli.report import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["dashboard"]:
        from gradwatch.cli.dashboard import main as dashboard_main

        return dashboard_main(argv[1:])
    from gradwatch.cli.fit import main as lightning_main

    return lightning_main(args)


if __name__ == "__main__":
    main()
