"""The package version, in a module that imports nothing (read by the database when it stamps files)."""

__version__ = "0.1.0"
