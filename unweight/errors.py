"""Exceptions raised by unweight: one hierarchy, each naming what failed and where."""


class UnweightError(Exception):
    """Base class for every error unweight raises on purpose."""


class SourceError(UnweightError):
    """The input checkpoint cannot be used: missing, unsupported layout, pickle files."""


class FormatError(UnweightError):
    """A file does not follow the format: bad header, unknown version, hostile sizes."""


class CorruptDataError(UnweightError):
    """Stored data fails a check: checksum mismatch, truncated stream, bad code."""


class UnsupportedDtypeError(UnweightError):
    """A tensor dtype the format cannot store."""


class DestinationError(UnweightError):
    """The output location cannot be written: exists, unwritable, disk full."""


class VerificationError(UnweightError):
    """A decoded tensor differs from its original."""
