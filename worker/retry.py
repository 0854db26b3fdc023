"""One backoff rule for everything Carewatch retries: a mailbox scan, the IDLE connection, an
email in the outbox. Capped exponential: `base`, doubling per failure, never above `cap`."""

from __future__ import annotations


def capped_backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1 -> base, 2 -> 2 x base, ...)."""
    return min(cap, base * 2 ** max(0, failures - 1))
