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
    """A configuration value is invalid or inconsistent with another.

    ``field``: the one setting at fault, where there is one; the message is then ``<field> <problem>``, and an
    app that calls the setting by another name (``optim.lr`` for OptimConfig's ``lr``) says the same of its key
    with :meth:`renamed`.
    """

    def __init__(self, problem: str, field: str | None = None) -> None:
        super().__init__(f"{field} {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def renamed(self, field: str) -> ConfigError:
        return ConfigError(self.problem, field)


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, or does not match the requested model."""
