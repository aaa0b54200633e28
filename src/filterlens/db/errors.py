"""Errors of the filter database. All are user-facing :class:`~filterlens.errors.FilterlensError`."""

from __future__ import annotations

from ..errors import FilterlensError


class DatabaseError(FilterlensError):
    """A filter database is missing, foreign, corrupt, of another schema version, or misused."""


class DatabaseWriteError(DatabaseError, OSError):
    """The disk refused a write (full, read-only, gone); the database keeps its last commit.
    Also an :class:`OSError`, so callers catching I/O errors keep working."""


class DuplicateModelError(DatabaseError):
    """A model's name or weights are already in the database."""

    def __init__(self, message: str, existing: str):
        super().__init__(message)
        self.existing = existing  # name of the model already stored
