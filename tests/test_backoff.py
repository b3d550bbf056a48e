"""Backoff: doubling to the cap, downward jitter, reset after a healthy period."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soar.backoff import Backoff


def test_doubles_to_the_cap_without_jitter() -> None:
    backoff = Backoff(1.0, 60.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.failures == 9
    backoff.reset()
    assert backoff.next_delay() == 1.0
    assert backoff.failures == 1


@given(
    base=st.floats(0.01, 10),
    ratio=st.floats(1, 100),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_jittered_delays_never_exceed_the_nominal_delay_or_cap(
    base: float, ratio: float, jitter: float, seed: int
) -> None:
    cap = base * ratio
    backoff = Backoff(base, cap, jitter=jitter, rng=random.Random(seed))
    nominal = base
    for _ in range(30):
        delay = backoff.next_delay()
        assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal + 1e-9
        assert delay <= cap + 1e-9
        nominal = min(nominal * 2, cap)


def test_jitter_spreads_delays_at_the_cap() -> None:
    backoff = Backoff(1.0, 4.0, jitter=0.5, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(20)][5:]
    assert len(set(delays)) == len(delays)
    assert min(delays) >= 2.0 and max(delays) <= 4.0


def test_resets_after_a_healthy_period() -> None:
    backoff = Backoff(1.0, 60.0, jitter=0.0, healthy_after=60.0)
    # Flapping: up for 5 s each time, the delay keeps doubling.
    now = 0.0
    delays = []
    for _ in range(4):
        backoff.succeeded_at(now)
        now += 5.0
        delay = backoff.failed_at(now)
        delays.append(delay)
        now += delay
    assert delays == [1, 2, 4, 8]
    # Up for 60 s: healthy, so the next failure starts over at the base.
    backoff.succeeded_at(now)
    assert backoff.up_since == now
    assert backoff.failed_at(now + 60.0) == 1.0
    assert backoff.up_since is None


def test_failures_without_success_never_reset() -> None:
    backoff = Backoff(1.0, 60.0, jitter=0.0, healthy_after=10.0)
    backoff.succeeded_at(0.0)
    assert backoff.failed_at(1.0) == 1.0
    # Connection attempts that never come up, however far apart, keep doubling.
    assert backoff.failed_at(100.0) == 2.0
    assert backoff.failed_at(1000.0) == 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0.0}, "base"),
        ({"base": 5.0, "cap": 1.0}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_rejects_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)  # type: ignore[arg-type]
