"""Jittered exponential backoff, with the "reset after a healthy period" policy.

Pure: no clock inside. Callers pass `trio.current_time()` so MockClock drives every delay.

    backoff = Backoff(base=1.0, cap=60.0, healthy_after=60.0)
    while True:
        try:
            await connect()
            backoff.succeeded_at(trio.current_time())  # the attempt came up
            await serve()
        except ConnectionLost:
            pass
        await trio.sleep(backoff.failed_at(trio.current_time()))

`failed_at` resets the doubling first when the attempt that just ended had been up for at least
`healthy_after` seconds, so a feed that drops once a day reconnects after ~`base`, while one that
flaps climbs to `cap`.

Jitter is downward only: a delay is drawn from [d * (1 - jitter), d]. At the cap, where many
clients that lost the same server sit, the delays still spread, and no delay ever exceeds `cap`.

May import: nothing of soar
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.2,
        healthy_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter is a fraction in [0, 1], got {jitter}")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.healthy_after = healthy_after
        self._rng = rng if rng is not None else random.Random()
        self._current = base
        self._up_since: float | None = None
        self.failures = 0
        """Consecutive failures since the last reset."""

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the next one, up to `cap`."""
        delay = self._current
        self._current = min(self._current * self.factor, self.cap)
        self.failures += 1
        return delay * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._current = self.base
        self.failures = 0

    def succeeded_at(self, now: float) -> None:
        """The attempt is up (connected, started) at `now`; the healthy period counts from here."""
        self._up_since = now

    def failed_at(self, now: float) -> float:
        """The attempt ended at `now`: the delay to wait before the next one.

        Resets first when it had been up for `healthy_after` seconds; an attempt that never came
        up (no `succeeded_at` since the last failure) never resets.
        """
        if self._up_since is not None and now - self._up_since >= self.healthy_after:
            self.reset()
        self._up_since = None
        return self.next_delay()

    @property
    def up_since(self) -> float | None:
        return self._up_since
