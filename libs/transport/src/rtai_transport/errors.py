"""The transport's exception."""

from __future__ import annotations


class TransportError(Exception):
    """Redis could not do what was asked (down, failing over, refused)."""


class TaskConfigConflict(TransportError):
    """A worker tried to serve a task under a model configuration other than the one live workers serve."""
