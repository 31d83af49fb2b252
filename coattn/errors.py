"""The errors coattn raises on purpose: each message is the whole story, so ``coattn`` prints it as one
line (no traceback unless ``COATTN_DEBUG=1``) naming the file, row or key and what to do.

    UserFacingError      base class: the CLI catches it and exits 1 with ``coattn: error: <message>``
    ConfigError          a setting that cannot work (names the config key)
    DataError            a dataset file that cannot be read as it is (names the file and row)
    OutputError          a run, result or index folder that cannot be written (names the folder)
    CheckpointError      a checkpoint that is missing, unreadable, unsafe or does not fit the model
    NonFiniteError       a NaN/Inf loss, gradient or weight: training stops before it damages anything
"""
from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message is the whole story: ``coattn`` prints it without a traceback."""


class ConfigError(UserFacingError, ValueError):
    """A configuration value that cannot work; the message names the key and the accepted values."""


class DataError(UserFacingError, ValueError):
    """A dataset file that cannot be used as it is; the message names the file and the row."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A caption file or folder that is not there (also a ``FileNotFoundError``, for callers that catch that)."""


class OutputError(UserFacingError, OSError):
    """A folder or file coattn must write that cannot be created or written (read-only, a file in the way,
    a full disk); the message names it."""


class CheckpointError(UserFacingError, ValueError):
    """A checkpoint (coattn's or LAION-CLAP's) that is missing, unreadable, unsafe or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file (also a ``FileNotFoundError``, for callers that catch that)."""


class NonFiniteError(UserFacingError, RuntimeError):
    """A NaN/Inf loss, gradient or weight: the run stops before it can damage anything."""
