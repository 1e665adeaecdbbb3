"""``python -m testbed.cli``: the ``testbed`` command."""

from testbed.cli.console import main

main()
