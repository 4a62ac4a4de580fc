"""Error hierarchy shared by every SIMS package.

Each error carries a one-line message meant for a person; the CLI prints it without a
traceback and the HTTP services map it to a status in one table
(:data:`retrieval_service.http_errors.SIMS_ERROR_STATUS`). An error may also name its case for
machines with ``kind`` (e.g. a :class:`LayoutError` of kind ``wrong_layout_size``): the ``error``
of an HTTP error body, which otherwise is the kind the table gives its class.
"""

from __future__ import annotations


class SimsError(Exception):
    """Base class of every error SIMS raises on purpose.

    ``kind`` (keyword only) names the case for machines; None leaves it to the error's class.
    """

    kind: str | None = None

    def __init__(self, *args: object, kind: str | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self.kind = kind


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


class OptionError(SimsError, ValueError):
    """A request's option cannot be honoured for its layout (e.g. a pin to a segment of another class)."""


class LayoutTooLargeError(LayoutError):
    """A layout has more pixels than a service accepts (refused before it is decoded)."""


class UnavailableError(SimsError):
    """Something a request needs is not up: no bank loaded yet, networks not loaded, no worker reachable.

    ``retry_after``: seconds after which asking again may succeed (None: no hint).
    """

    def __init__(self, *args: object, kind: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(*args, kind=kind)
        self.retry_after = retry_after


class TimedOutError(SimsError):
    """A synthesis, or a service called on the request's behalf (a worker, the retrieval service), took too long."""


class UpstreamError(SimsError):
    """A service called on the request's behalf answered with an error.

    ``status`` is the HTTP status it answered with: one that is the caller's to see (a 4xx, 503 or
    504) is passed on with the upstream's ``kind``; any other failure of the upstream is a 502.
    """

    def __init__(self, *args: object, kind: str | None = None, status: int | None = None) -> None:
        super().__init__(*args, kind=kind)
        self.status = status
