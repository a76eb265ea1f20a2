"""``python -m continual`` is the ``continual`` command."""

from continual.cli import main

main()
