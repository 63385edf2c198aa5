"""`gsil track-scores`: every evaluation score of a run as TensorBoard scalars (gsil.tracking_scores)."""

from __future__ import annotations

from gsil.tracking_scores import add_arguments, run

__all__ = ["add_arguments", "run"]
