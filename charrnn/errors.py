"""User-facing errors.

Every error the harness expects a user to hit derives from :class:`CharRNNError`;
its message is one line that says what is wrong and how to fix it, so the
command-line entry points can print it without a traceback.
"""

from __future__ import annotations


class CharRNNError(Exception):
    """Base class for errors caused by user input (data, config, checkpoints)."""


class DataError(CharRNNError):
    """The training text or corpus cannot be used as given."""


class ConfigError(CharRNNError):
    """A configuration value is invalid or inconsistent with another."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, or does not match the requested model."""
