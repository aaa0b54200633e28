"""Reproduce the paper's numbers from its published ``dataset.h5`` (``filterlens reproduce``)."""

from .core import ReproduceResult, default_db_path, open_database, reproduce
from .published import PUBLISHED

__all__ = ["PUBLISHED", "ReproduceResult", "default_db_path", "open_database", "reproduce"]
