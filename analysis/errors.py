"""The analysis package's user-facing error.

It derives from the engine's :class:`CharRNNError` so one ``except`` clause in the CLIs covers bad checkpoints,
bad text and bad analysis arguments alike, each printed as a single ``error: ...`` line.
"""

from __future__ import annotations

from charrnn.errors import CharRNNError


class AnalysisError(CharRNNError):
    """An analysis request cannot be served as given (unknown run, feature, unit; range out of bounds...)."""
