"""The operator's entry point: ``digest ...``."""

from digest.cli.subscribers import app, main

__all__ = ["app", "main"]
