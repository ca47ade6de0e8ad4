"""The ``gradwatch`` command: ``sweep`` in a light process, ``fit`` / ``validate`` / ``test`` through LightningCLI.

Dispatching here, before Lightning is imported, lets ``gradwatch sweep`` reject a bad file in a fraction of a
second and keeps the controller's own start-up short.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    """Run the ``gradwatch`` command with ``args`` (``sys.argv[1:]`` when ``None``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["sweep"]:
        from gradwatch.sweep.cli import main as sweep_main

        return sweep_main(argv[1:])
    from gradwatch.cli import main as lightning_main

    return lightning_main(args)


if __name__ == "__main__":
    main()
