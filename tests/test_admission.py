"""Issue 29, item 1: deadline-aware admission (retrieval_service/admission.py), on a fake clock and service time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank.errors import OptionError, UnavailableError
from retrieval_service.admission import (
    Admission,
    ServiceTime,
    parse_slots_header,
    requested_timeout,
    slots_header,
)


class Clock:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fixed(seconds: float) -> ServiceTime:
    """A service time known to be exactly ``seconds`` (no spread)."""
    return ServiceTime(prior=seconds, spread=0.0)


def test_refuses_when_the_queued_work_passes_the_deadline_and_admits_when_it_fits() -> None:
    clock = Clock()
    a = Admission(1, 5, service=fixed(1.0), clock=clock)
    running = a.admit(10.0)
    running.start()  # at t=0: ends at 1.0
    # Behind it: starts at 1.0, ends at 2.0.
    assert a.predict().finish == pytest.approx(2.0)
    waiting = a.admit(2.5)
    # Behind both: would end at 3.0, past a 2.5 s deadline; a 3.5 s one fits.
    with pytest.raises(UnavailableError) as refused:
        a.admit(2.5)
    assert refused.value.kind == "synthesis_busy" and refused.value.retry_after == 1
    assert "past its deadline of 2.5 s" in str(refused.value)
    assert a.admitted == 2 and a.refused == 1
    a.admit(3.5).release()
    # Time passes: the running job is half done, so the same deadline fits now.
    clock.now = 0.6
    a.admit(2.5).release()
    # The work ahead shrinks when a job ends.
    clock.now = 0.9
    running.finish(1.0)  # measured as estimated
    waiting.start()
    assert a.predict().finish == pytest.approx(2.0)  # behind the one that started at 0.9
    assert a.running == 1 and a.waiting == 0


def test_retry_after_says_when_the_deadline_would_fit() -> None:
    clock = Clock()
    a = Admission(1, 10, service=fixed(4.0), clock=clock)
    first = a.admit(100.0)
    first.start()  # ends at 4
    second = a.admit(100.0)  # ends at 8
    with pytest.raises(UnavailableError) as e:
        a.admit(5.0)  # would end at 12: 7 s late
    assert e.value.retry_after == 7
    # Coming back that much later, the work ahead having gone as estimated, it is admitted.
    clock.now = 4.0
    first.finish(4.0)
    second.start()
    clock.now = 7.0
    a.admit(5.0)


def test_the_queue_bound_holds_whatever_the_deadline() -> None:
    a = Admission(2, 1, service=fixed(0.01), clock=Clock())
    for _ in range(3):
        a.admit(1e9)
    with pytest.raises(UnavailableError, match="every slot and the queue are taken"):
        a.admit(1e9)
    assert a.limit == 3 and a.admitted == 3


def test_unknown_service_time_admits_only_into_a_free_slot() -> None:
    a = Admission(2, 3, clock=Clock())
    first, second = a.admit(1.0), a.admit(1.0)
    with pytest.raises(UnavailableError, match="not known yet"):
        a.admit(1.0)
    first.start()
    first.finish(0.5)  # now measured: the queue opens
    assert a.service.expected() == pytest.approx(0.5)
    second.start()
    a.admit(5.0)


def test_a_job_that_would_run_alone_is_always_admitted() -> None:
    # An estimate past every deadline (a slow spell) must be able to recover.
    a = Admission(1, 1, service=fixed(10.0), clock=Clock())
    lone = a.admit(1.0)
    with pytest.raises(UnavailableError):
        a.admit(1.0)
    lone.release()
    a.admit(1.0)


def test_upstream_admitted_jobs_are_checked_against_the_slots_only() -> None:
    a = Admission(1, 1, service=fixed(10.0), clock=Clock())
    a.admit(1.0).start()
    a.admit(1.0, upstream=True)  # the mirror upstream judged the deadline
    with pytest.raises(UnavailableError, match="queue are taken"):
        a.admit(1.0, upstream=True)


def test_a_shorter_deadline_from_the_body_narrows_the_ticket() -> None:
    a = Admission(1, 1, service=fixed(1.0), clock=Clock())
    a.admit(10.0).start()
    ticket = a.admit(10.0)  # predicted to end at 2.0
    ticket.narrow(30.0)  # longer: no change
    assert ticket.timeout == 10.0
    ticket.narrow(2.5)
    assert ticket.timeout == 2.5 and ticket.remaining() == pytest.approx(2.5)
    with pytest.raises(UnavailableError):
        ticket.narrow(1.5)
    assert ticket.done and a.admitted == 1  # refused and released


def test_a_stopped_job_only_ever_raises_the_estimate() -> None:
    clock = Clock()
    a = Admission(2, 0, service=fixed(1.0), clock=clock)
    quick, slow = a.admit(10.0), a.admit(10.0)
    quick.start()
    slow.start()
    clock.now = 0.2
    quick.finish_partial()  # stopped after 0.2 s: says nothing about a whole job
    assert a.service.expected() == pytest.approx(1.0)
    clock.now = 3.0
    slow.finish_partial()  # still going after 3 s: the work is slower than thought
    assert a.service.expected() > 1.0


def test_a_mirror_starts_its_waiting_tickets_first_come_first_served() -> None:
    clock = Clock()
    a = Admission(1, 2, service=fixed(1.0), infer_starts=True, clock=clock)
    first, second = a.admit(10.0), a.admit(10.0)
    assert first.started == 0.0 and second.started is None
    clock.now = 1.5
    first.finish()  # measured from its inferred start
    assert a.service.expected() == pytest.approx(1.0 + 0.2 * 0.5)
    assert second.started == 1.5 and a.running == 1
    # More slots: waiting tickets start at once.
    third = a.admit(10.0)
    a.set_capacity(2, 2)
    assert third.started == 1.5


def test_release_is_idempotent_and_drop_spares_claimed_tickets() -> None:
    a = Admission(1, 1, service=fixed(1.0), clock=Clock())
    t = a.admit(1.0)
    t.claim()
    t.drop()  # a job owns it: still held
    assert a.admitted == 1
    t.finish()
    t.finish()
    t.release()
    assert a.admitted == 0


@settings(max_examples=200, deadline=None)
@given(
    concurrency=st.integers(1, 4),
    queue=st.integers(0, 6),
    mean=st.floats(0.05, 5.0),
    started=st.lists(st.floats(0.0, 10.0), max_size=4),
    waiting=st.integers(0, 6),
    timeouts=st.lists(st.floats(0.01, 30.0), min_size=1, max_size=8),
)
def test_admission_is_monotone_in_the_deadline_and_never_passes_the_bounds(
    concurrency: int, queue: int, mean: float, started: list[float], waiting: int, timeouts: list[float]
) -> None:
    clock = Clock()
    clock.now = 10.0
    a = Admission(concurrency, queue, service=fixed(mean), clock=clock)
    for t0 in started[:concurrency]:
        ticket = a.admit(1e9, upstream=True)
        ticket.start()
        ticket.started = t0  # started at various times before now
    for _ in range(waiting):
        if a.admitted < a.limit:
            a.admit(1e9, upstream=True)
    prediction = a.predict()
    for timeout in sorted(timeouts):
        try:
            a.admit(timeout).release()
        except UnavailableError as e:
            assert 1 <= e.retry_after <= 60
            # Refused: the bounds are full, or it would be late; and then so would any shorter deadline.
            assert a.admitted >= a.limit or prediction.finish > timeout
            continue
        assert a.admitted < a.limit
        assert prediction.finish <= timeout or a.admitted == 0
        # Admitted: so is any longer deadline.
        for longer in (timeout * 2, timeout + 100):
            a.admit(longer).release()
    assert a.admitted <= a.limit


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12), limit=st.floats(0.1, 100.0))
def test_a_client_deadline_is_a_positive_number_capped_by_the_server(text: str, limit: float) -> None:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value > 0 and math.isfinite(value):
        assert requested_timeout(text, limit) == min(limit, value)
    else:
        with pytest.raises(OptionError, match="X-SIMS-Timeout must be a positive number"):
            requested_timeout(text, limit)
    assert requested_timeout(None, limit) == limit


@given(concurrency=st.integers(0, 64), queue=st.integers(0, 64))
def test_the_slots_header_round_trips(concurrency: int, queue: int) -> None:
    assert parse_slots_header(slots_header(concurrency, queue)) == (concurrency, queue)


@pytest.mark.parametrize("text", [None, "", "concurrency=2", "concurrency=x, queue=1", "concurrency=-1, queue=0"])
def test_a_bad_slots_header_is_ignored(text: str | None) -> None:
    assert parse_slots_header(text) is None


def test_a_job_bound_to_a_slot_when_sent_waits_for_the_last_to_free() -> None:
    # Two slots ending in 1 s and 3 s: taking the first free, a waiting job would start in 1 s;
    # bound at submission (Dask), it may have to wait for the one ending in 3 s.
    clock = Clock()
    for first_free, start in ((True, 1.0), (False, 3.0)):
        admission = Admission(2, 1, service=fixed(4.0), clock=clock, first_free=first_free)
        a, b = admission.admit(1e9), admission.admit(1e9)
        a.start()
        b.start()
        a.started, b.started = clock.now - 3.0, clock.now - 1.0  # they end in 1 s and in 3 s
        prediction = admission.predict()
        assert prediction is not None and prediction.start == pytest.approx(start)
    # A free slot is taken at once either way.
    admission = Admission(2, 1, service=fixed(4.0), clock=clock, first_free=False)
    admission.admit(1e9).start()
    prediction = admission.predict()
    assert prediction is not None and prediction.start == 0.0
