"""Deadline-aware admission of expensive work: admit only what can finish within its deadline.

Every kind of expensive work (a synthesis, a segment batch) has one :class:`Admission`: at most
``concurrency`` jobs run at once and at most ``queue`` wait. A request is admitted only if, at the
measured service time (:class:`ServiceTime`, a moving estimate) and behind the work already running
or waiting, it is predicted to finish within its deadline (a job that would run alone is always
admitted: that is the best case, and how the estimate recovers from a slow spell). The rest are
refused at once with 503
(``kind``, e.g. ``synthesis_busy``) and a ``Retry-After`` taken from the same prediction, before
any of their body is read: a refusal costs a lock and a few additions.

This is the one estimator of every synthesis path: the in-process backend and ``sims worker``
(through :class:`~synthesis.worker.runtime.SynthesisSlots`, which start and finish its tickets on
their threads), the service's HTTP backend (one mirror per worker, so that the service never
forwards what the worker would refuse), the Dask backend (its replicas are the slots), and
``POST /segments/batch``. A mirror does not see when a job starts on the far side, so it infers
starts (``infer_starts``): a waiting ticket starts when a slot frees, first come first served, and
its service time is measured from that start to its answer.

It imports no engine and no web framework (the standard library, :mod:`memory_bank.errors` and the
header names of :mod:`retrieval_service.http_models`), so that the service and ``synthesis`` can
both use it.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from memory_bank.errors import OptionError, UnavailableError
from retrieval_service.http_models import ADMITTED_HEADER, SLOTS_HEADER, TIMEOUT_HEADER

if TYPE_CHECKING:
    from retrieval_service.types import SynthesisReply, SynthesizeOptions

__all__ = [
    "ADMITTED_HEADER",
    "SLOTS_HEADER",
    "TIMEOUT_HEADER",
    "Admission",
    "AdmittingBackend",
    "Prediction",
    "ServiceTime",
    "Ticket",
    "parse_slots_header",
    "requested_timeout",
    "slots_header",
]

#: Bounds of ``Retry-After`` (seconds).
RETRY_AFTER_RANGE = (1, 60)


class ServiceTime:
    """A moving estimate of the seconds one unit of work takes: the mean and the mean deviation,
    both exponentially weighted (as TCP estimates a round trip, RFC 6298).

    Args:
        prior: the estimate before anything was measured (None: unknown until the first sample).
        weight: the weight of a new sample in the mean (the deviation's is twice that, at most 1).
        spread: how many deviations :meth:`cautious` adds to the mean (3 mean deviations are about
            the 99th percentile of a normal spread: a 504 wastes the work, a refusal costs nothing).
        floor: the least deviation, as a share of the mean: steady work still jitters (the machine
            is shared), and the work queued ahead jitters too.
    """

    def __init__(
        self, prior: float | None = None, weight: float = 0.2, spread: float = 3.0, floor: float = 0.1
    ) -> None:
        if prior is not None and prior <= 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.mean: float | None = prior
        self.deviation = 0.0 if prior is None else prior / 4
        self.weight = weight
        self.spread = spread
        self.floor = floor
        self.samples = 0

    def observe(self, seconds: float, work: float = 1.0) -> None:
        """Add one measured job: ``seconds`` for ``work`` units."""
        if work <= 0 or seconds < 0 or not math.isfinite(seconds):
            return
        per = seconds / work
        self.samples += 1
        if self.mean is None:
            self.mean, self.deviation = per, per / 2
            return
        error = per - self.mean
        self.mean += self.weight * error
        self.deviation += min(1.0, 2 * self.weight) * (abs(error) - self.deviation)

    def expected(self, work: float = 1.0) -> float | None:
        """Seconds ``work`` units are expected to take (None while unknown)."""
        return None if self.mean is None else self.mean * work

    def cautious(self, work: float = 1.0) -> float | None:
        """Seconds ``work`` units take, rarely more: the mean plus ``spread`` deviations (at least
        ``floor`` of the mean each)."""
        if self.mean is None:
            return None
        return (self.mean + self.spread * max(self.deviation, self.floor * self.mean)) * work


@dataclass(frozen=True)
class Prediction:
    """When a job admitted now would start and finish, in seconds from now."""

    start: float
    finish: float


class Ticket:
    """One admitted job: its deadline and its place in its :class:`Admission`.

    The holder that runs the job calls :meth:`start` when it starts and :meth:`finish` when it
    ends (a mirror's tickets start by themselves). Whoever admitted it calls :meth:`drop` when the
    request ends, which releases the ticket unless a job :meth:`claim`-ed it: a claimed ticket is
    released by its job's :meth:`finish`, which may come later (work that stops after its caller
    timed out still holds its slot until then).
    """

    def __init__(self, admission: Admission, timeout: float, work: float, predicted: float | None) -> None:
        self.admission = admission
        self.timeout = timeout
        self.work = work
        self.admitted_at = admission.clock()
        self.deadline = self.admitted_at + timeout
        self.predicted = predicted  # seconds from admission to the predicted finish (None: unknown)
        self.started: float | None = None
        self.slot_was_free = admission.admitted < admission.concurrency  # (it is not counted yet)
        self.claimed = False
        self.done = False

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past it)."""
        return self.deadline - self.admission.clock()

    def fits(self, timeout: float) -> bool:
        """Whether the job was predicted to finish within ``timeout`` seconds of its admission."""
        return self.predicted is None or self.predicted <= timeout

    def narrow(self, timeout: float) -> None:
        """Shorten the deadline to ``timeout`` seconds after admission (a client's ``timeout_s``
        read from the body); raises the admission's 503 and releases the ticket if the job would
        not finish by then."""
        if timeout >= self.timeout:
            return
        if not self.fits(timeout):
            self.release()
            raise self.admission.refusal(
                f"it would finish in about {self.predicted:.2f} s, past its deadline of {timeout:g} s",
                self.admission.retry_after(),
            )
        self.timeout, self.deadline = timeout, self.admitted_at + timeout

    def claim(self) -> None:
        """A job takes the ticket over: from now on only its :meth:`finish` releases it."""
        self.claimed = True

    def start(self) -> None:
        """The job starts running (its service time is measured from now)."""
        self.admission._start(self)

    def finish(self, seconds: float | None = None) -> None:
        """The job ended: release the ticket and measure it (``seconds`` of service, else the time
        since it started; nothing is measured for a job that never started)."""
        self.admission._release(self, seconds, observe=True)

    def finish_partial(self, seconds: float | None = None) -> None:
        """The job stopped before its end (its deadline passed): release the ticket, and count its
        time (a lower bound of the job's) only if it says the work is slower than estimated."""
        self.admission._release(self, seconds, observe="partial")

    def release(self) -> None:
        """Release the ticket without measuring anything (the job failed early, or never ran)."""
        self.admission._release(self, None, observe=False)

    def drop(self) -> None:
        """The request is over: release the ticket unless a job claimed it."""
        if not self.claimed:
            self.release()


class Admission:
    """Admission control of one kind of work (see the module docstring).

    Args:
        concurrency: jobs that run at once (the slots); may change later (e.g. Dask replicas).
        queue: jobs that may wait for a slot; more are refused whatever their deadline.
        kind: the error kind of a refusal (503), e.g. ``synthesis_busy``.
        what: the work's name in messages (``synthesis``, ``segment batch``).
        service: the service-time estimate (default: unknown until measured; while unknown, a job
            is admitted only if a slot is free).
        infer_starts: start waiting tickets by themselves as slots free (for mirrors of work run
            elsewhere, whose starts are not seen).
        first_free: a waiting job takes the slot that frees first (threads of one pool, a worker's
            queue). False where a job is bound to a slot when it is sent (a Dask scheduler assigns
            a task to a replica at once): it is then predicted to wait for the slot that frees last.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        concurrency: int,
        queue: int,
        *,
        kind: str = "synthesis_busy",
        what: str = "synthesis",
        service: ServiceTime | None = None,
        infer_starts: bool = False,
        first_free: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.what = what
        self.service = service or ServiceTime()
        # Seconds from admission to start of a job that found a slot free (explicit starts only).
        self.preparation = ServiceTime()
        self.infer_starts = infer_starts
        self.first_free = first_free
        self.clock = clock
        self._lock = threading.Lock()
        self._running: list[Ticket] = []
        self._waiting: list[Ticket] = []  # in order of admission
        self.peak_running = 0
        self.refused = 0
        self.set_capacity(concurrency, queue)

    # State

    def set_capacity(self, concurrency: int, queue: int) -> None:
        """Change the slots and the queue (jobs already admitted keep their place)."""
        if concurrency < 0 or queue < 0:
            raise ValueError(f"need concurrency >= 0 and queue >= 0, got {concurrency} and {queue}")
        with self._lock:
            self.concurrency, self.queue = concurrency, queue
            self._start_waiting()

    @property
    def limit(self) -> int:
        """Jobs admitted at once at most: running plus waiting."""
        return self.concurrency + self.queue

    @property
    def running(self) -> int:
        """Jobs running now (including those whose caller timed out and that are still stopping)."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs admitted and not started yet."""
        return len(self._waiting)

    @property
    def admitted(self) -> int:
        """Jobs running or waiting."""
        return len(self._running) + len(self._waiting)

    # Decisions

    def predict(self, work: float = 1.0) -> Prediction | None:
        """When a job of ``work`` units admitted now would start and finish (None while the service
        time is unknown)."""
        with self._lock:
            return self._predict(work)

    def admit(self, timeout: float, work: float = 1.0, *, upstream: bool = False) -> Ticket:
        """A ticket for a job of ``work`` units that must finish within ``timeout`` seconds, or the
        503 (:class:`~memory_bank.errors.UnavailableError`, with ``retry_after``) if it would not.

        ``upstream``: a mirror of this admission upstream (the service's, of a worker) already judged
        the deadline on its own measurements, hop included; only the slots and the queue are checked
        again, so that the two never disagree about a deadline at the margin."""
        with self._lock:
            ticket = self._decide(timeout, work, upstream=upstream)
            self._waiting.append(ticket)
            self._start_waiting()
            return ticket

    def check(self, timeout: float, work: float = 1.0) -> None:
        """Raise the 503 :meth:`admit` would raise, without admitting anything (a gate before the
        job's size is known)."""
        with self._lock:
            self._decide(timeout, work)

    def retry_after(self) -> int:
        """Seconds until a job is likely to be admitted again: until the first slot frees."""
        with self._lock:
            return self._retry_after(None)

    def refusal(self, why: str, retry_after: int) -> UnavailableError:
        """The 503 of a refused job."""
        return UnavailableError(f"{self.what} refused: {why}", kind=self.kind, retry_after=retry_after)

    # Internals (called with the lock held)

    def _decide(self, timeout: float, work: float, *, upstream: bool = False) -> Ticket:
        if self.admitted >= self.limit:
            self.refused += 1
            running = f"{self.running} running" if self.concurrency else "no slot up"
            raise self.refusal(
                f"every slot and the queue are taken ({running}, {self.waiting} waiting; at most "
                f"{self.concurrency} + {self.queue})",
                self._retry_after(None),
            )
        prediction = self._predict(work)
        if prediction is None:  # nothing measured yet: only a free slot is a safe bet
            if self.admitted >= self.concurrency:
                self.refused += 1
                raise self.refusal(
                    f"every slot is taken and the time a {self.what} takes is not known yet", RETRY_AFTER_RANGE[0]
                )
            return Ticket(self, timeout, work, None)
        # With nothing admitted a job runs alone, the best case there is: it is admitted whatever the
        # estimate says, or an estimate once past the deadline (a slow spell) could never recover.
        if prediction.finish > timeout and self.admitted and not upstream:
            self.refused += 1
            raise self.refusal(
                f"behind the {self.admitted} admitted it would finish in about {prediction.finish:.2f} s, past its "
                f"deadline of {timeout:g} s",
                self._retry_after(prediction.finish - timeout),
            )
        return Ticket(self, timeout, work, prediction.finish)

    def _predict(self, work: float) -> Prediction | None:
        """List scheduling of what is admitted: each waiting job takes the slot that frees first."""
        mean = self.service.expected(1.0)
        cautious = self.service.cautious(work)
        if mean is None or cautious is None:
            return None
        if self.concurrency == 0:
            return Prediction(math.inf, math.inf)
        now = self.clock()
        # When each running job ends; an overdue one is given one deviation more (it is running late).
        dev = self.service.deviation
        ends = sorted(
            max(dev * t.work, t.started + mean * t.work - now) for t in self._running if t.started is not None
        )
        # More running than slots (the slots were cut): the first to end free no slot.
        ends = ends[max(0, len(ends) - self.concurrency) :]
        free = ends + [0.0] * (self.concurrency - len(ends))
        heapq.heapify(free)
        for t in self._waiting:
            heapq.heappush(free, heapq.heappop(free) + mean * t.work)
        start = heapq.heappop(free)
        if not self.first_free and start > 0:
            # Bound to a slot when sent: a job that must wait may wait for the slot that frees last.
            start = max([start, *free])
        # A job also needs its preparation (reading its upload, decoding it) before it can start:
        # done while it waits for a slot, it delays one that finds a slot free.
        prep = self.preparation.expected(1.0) or 0.0
        return Prediction(start, max(start, prep) + cautious)

    def _retry_after(self, late_by: float | None) -> int:
        mean = self.service.expected(1.0)
        if mean is None:
            seconds = 1.0
        elif late_by is not None:  # the deadline refusal: once the work ahead has shrunk by that much
            seconds = late_by
        else:  # the queue bound: once the first slot frees
            now = self.clock()
            ends = [max(0.0, t.started + mean * t.work - now) for t in self._running if t.started is not None]
            seconds = min(ends, default=mean)
        low, high = RETRY_AFTER_RANGE
        return max(low, min(high, math.ceil(seconds)))

    def _start(self, ticket: Ticket) -> None:
        with self._lock:
            self._start_locked(ticket)

    def _start_locked(self, ticket: Ticket) -> None:
        if ticket.done or ticket.started is not None:
            return
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        ticket.started = self.clock()
        if ticket.slot_was_free and not self.infer_starts:
            self.preparation.observe(ticket.started - ticket.admitted_at)
        self._running.append(ticket)
        self.peak_running = max(self.peak_running, len(self._running))

    def _start_waiting(self) -> None:
        if self.infer_starts:
            while self._waiting and len(self._running) < self.concurrency:
                self._start_locked(self._waiting[0])

    def _release(self, ticket: Ticket, seconds: float | None, *, observe: bool | str) -> None:
        with self._lock:
            if ticket.done:
                return
            ticket.done = True
            if ticket.started is not None:
                self._running.remove(ticket)
                took = seconds if seconds is not None else self.clock() - ticket.started
                expected = self.service.expected(ticket.work)
                # A stopped job's time is a lower bound: it can only say that the work is slower.
                if observe is True or (observe == "partial" and (expected is None or took > expected)):
                    self.service.observe(took, ticket.work)
            else:
                self._waiting.remove(ticket)
            self._start_waiting()


class AdmittingBackend:
    """What a synthesis backend that admits through its own :meth:`admit` shares (the service's
    HTTP-worker and Dask backends): the capacity check, and :meth:`synthesize`, which claims the
    request's ticket and hands it to the backend's :meth:`run_claimed`."""

    timeout: float  # the server's limit on a synthesis (seconds)

    def admit(self, timeout: float) -> Ticket:  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def check_capacity(self) -> None:
        """Raise the 503 :meth:`admit` would raise for a synthesis due within the timeout."""
        self.admit(self.timeout).release()

    def claim_ticket(self, options: _HasDeadline, ticket: Ticket | None) -> Ticket:
        """The request's ticket (the route's, or admitted now within ``options``' deadline), claimed
        by the job: from now on only the job's end releases it."""
        ticket = ticket or self.admit(options.deadline(self.timeout))
        ticket.claim()
        return ticket

    async def synthesize(
        self,
        layout_png: bytes,
        options: SynthesizeOptions,
        instances_png: bytes | None = None,
        *,
        ticket: Ticket | None = None,
    ) -> SynthesisReply:
        """Synthesize under the request's ticket (the route's, or admitted now), claimed first."""
        return await self.run_claimed(layout_png, options, instances_png, self.claim_ticket(options, ticket))

    async def run_claimed(  # pragma: no cover - each backend has its own
        self, layout_png: bytes, options: SynthesizeOptions, instances_png: bytes | None, ticket: Ticket
    ) -> SynthesisReply:
        """The backend's synthesis under ``ticket``, already claimed: its end (or the backend) releases it."""
        raise NotImplementedError


class _HasDeadline(Protocol):
    def deadline(self, limit: float) -> float: ...


def requested_timeout(header: str | bytes | None, limit: float) -> float:
    """The deadline of a request: the server's ``limit``, or the client's (``X-SIMS-Timeout``) when
    shorter. A header that is not a positive number of seconds is a 422
    (:class:`~memory_bank.errors.OptionError`)."""
    if header is None:
        return limit
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    try:
        asked = float(text)
    except ValueError:
        asked = math.nan
    if not (asked > 0) or not math.isfinite(asked):
        raise OptionError(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {text[:40]!r}")
    return min(limit, asked)


def slots_header(concurrency: int, queue: int) -> str:
    """The value of :data:`SLOTS_HEADER`."""
    return f"concurrency={concurrency}, queue={queue}"


def parse_slots_header(text: str | None) -> tuple[int, int] | None:
    """(concurrency, queue) from a :data:`SLOTS_HEADER` value; None if absent or malformed."""
    if not text:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in text.split(","))
    try:
        concurrency, queue = int(fields["concurrency"]), int(fields["queue"])
    except (KeyError, ValueError):
        return None
    return (concurrency, queue) if concurrency >= 0 and queue >= 0 else None
