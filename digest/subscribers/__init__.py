"""Subscribers and their filters (split into modules next)."""

from digest.subscribers.manage import *  # noqa: F403
