"""``python -m turnout``: the ``turnout`` command, for subprocesses that must use this Python."""

from turnout.cli.main import main

main()
