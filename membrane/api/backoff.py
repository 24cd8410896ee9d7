"""Exponential backoff with jitter (pure: time is the caller's business).

Full-range jitter on top of an exponential ceiling (the "decorrelated" family AWS and client-go
use) keeps many clients that failed together from retrying together against a recovering server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """`next()` returns the delay before the next attempt; `reset()` after a success.

    The n-th delay (from 0) is drawn uniformly from [ceiling * (1 - jitter), ceiling] with
    ceiling = min(initial * factor**n, maximum), so it never exceeds `maximum` and never drops
    below (1 - jitter) of the exponential curve.
    """

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"bad backoff parameters {self!r}")

    def ceiling(self) -> float:
        # Cap the exponent so a long outage cannot overflow the float.
        return min(self.initial * self.factor ** min(self.attempts, 64), self.maximum)

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempts += 1
        return ceiling * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempts = 0
