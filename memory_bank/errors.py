"""Error hierarchy shared by every SIMS package.

Each error carries a one-line message meant for a person; the CLI prints it without a
traceback and the HTTP service maps it to a 4xx status.
"""

from __future__ import annotations


class SimsError(Exception):
    """Base class of every error SIMS raises on purpose."""


class BankNotFoundError(SimsError, FileNotFoundError):
    """No published bank exists at the given path."""


class BankFormatError(SimsError):
    """A bank exists but its files are unreadable, inconsistent or of an unknown version."""


class BankBusyError(SimsError):
    """Another process is writing a new version of the same bank."""


class DatasetError(SimsError):
    """A dataset on disk is missing, empty or malformed."""


class LayoutError(SimsError, ValueError):
    """A label map (a query layout or a dataset label) is not usable as given."""
