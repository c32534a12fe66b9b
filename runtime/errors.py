"""Exceptions raised by infire: one hierarchy, each naming what failed and where."""


class InfireError(Exception):
    """Base class for every error infire raises on purpose."""


class ConfigError(InfireError):
    """A configuration value is invalid: names the field, the value and what is allowed."""


class ModelLoadError(InfireError):
    """A checkpoint cannot be loaded: missing files, missing or mis-shaped tensors."""


class UnsupportedArchitectureError(ModelLoadError):
    """config.json names an architecture infire does not implement."""


class InvalidRequestError(InfireError):
    """A request cannot be served as given (prompt too long, bad sampling values)."""


class EngineDeadError(InfireError):
    """The engine stopped and can no longer serve requests."""
