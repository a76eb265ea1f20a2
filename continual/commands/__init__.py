"""The doors: the ``continual`` command (the only Hydra import) and its subcommands."""
