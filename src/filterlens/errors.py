"""Errors a user can cause. The CLI prints these as one line, without a traceback."""


class FilterlensError(Exception):
    """A problem with the user's input (a file, an option, a model) rather than a bug."""


class SourceError(FilterlensError):
    """A model source could not be read or understood."""


class ArchitectureError(FilterlensError):
    """An unknown architecture, or weights that do not fit one."""


class FirstLayerError(FilterlensError):
    """A model's first layer could not be found or measured, or the study's inputs are wrong."""
