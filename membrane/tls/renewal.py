"""When a certificate is renewed: at a fixed fraction of its lifetime (2/3 by default), so a
renewal that fails has the last third to be retried before anything expires. Pure."""

from __future__ import annotations

RENEW_FRACTION = 2 / 3


def renew_at(not_before: float, not_after: float, fraction: float = RENEW_FRACTION) -> float:
    """The moment (same clock as the arguments) a certificate valid from `not_before` to
    `not_after` should be replaced."""
    if not_after <= not_before:
        return not_before
    return not_before + (not_after - not_before) * fraction


def due(not_before: float, not_after: float, now: float, fraction: float = RENEW_FRACTION) -> bool:
    return now >= renew_at(not_before, not_after, fraction)
