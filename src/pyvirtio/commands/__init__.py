"""Subcommands of the ``pyvirtio`` CLI, one module each."""
