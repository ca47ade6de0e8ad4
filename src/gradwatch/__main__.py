"""``python -m gradwatch`` is the ``gradwatch`` command."""

from gradwatch.commands import main

main()
