"""Digest: an event-driven newsletter digest mailer."""

__version__ = "0.1.0"
