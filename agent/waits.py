"""Tenacity building blocks shared by every wait: a deadline on an injectable clock, a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result
from tenacity.stop import stop_base
from tenacity.wait import wait_base

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


class stop_at_deadline(stop_base):
    """Stop once the deadline has passed (measured on the given clock).

    wait_capped shortens the last sleep to end at the deadline, so one last attempt happens there.
    """

    def __init__(self, deadline: float, clock: Clock = time.monotonic) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() >= self.deadline


class wait_capped(wait_base):
    """Never sleep past the deadline, so the last attempt happens on time."""

    def __init__(self, inner: wait_base, deadline: float, clock: Clock = time.monotonic) -> None:
        self.inner = inner
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> float:
        return max(0.0, min(self.inner(retry_state), self.deadline - self.clock()))


@dataclass
class WaitStats:
    """What a wait saw: attempts, elapsed time and the last observation, for its summary line."""

    started: float
    attempts: int = 0
    changes: int = 0
    last: str = ""

    def elapsed(self, clock: Clock) -> float:
        """Seconds since the wait began, rounded for logs."""
        return round(clock() - self.started, 3)


def poll_until(
    attempt: Callable[[], T],
    *,
    done: Callable[[T], bool],
    wait: wait_base,
    deadline: float,
    clock: Clock,
    sleep: Sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """Call `attempt` until `done(result)`, the deadline or `give_up()`; returns the last result."""
    retrying = Retrying(
        retry=retry_if_result(lambda result: not done(result)),
        wait=wait_capped(wait, deadline, clock),
        stop=lambda state: give_up() or stop_at_deadline(deadline, clock)(state),
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: T = retrying(attempt)
    return result
