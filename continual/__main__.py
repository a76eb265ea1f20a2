"""``python -m continual`` is the ``continual`` command."""

from continual.commands.cli import main

main()
