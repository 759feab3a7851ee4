"""The command-line face of RadVault (Typer + Rich).

``app`` is the console script; ``main(args)`` runs it in-process for tests.
"""

from radvault.cli._app import app, main

__all__ = ["app", "main"]
