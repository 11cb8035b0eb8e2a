"""Bounded polling: wait on a condition with a deadline instead of sleeping."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Call `predicate` until it returns a truthy value and return it; TimeoutError after `timeout` s.

    Exceptions raised by `predicate` propagate: a check that cannot be evaluated is a failure,
    not a reason to keep polling.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f}s ({attempts} checks) waiting for {what}")
        time.sleep(min(interval, remaining))
