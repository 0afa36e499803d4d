"""The reconnect policy, pure: an injected rng, no sleeping (STYLE.md: reconnect policy is pure)."""

from __future__ import annotations

import pytest

from tcpulse.policy.backoff import Backoff, is_retryable


def test_delays_grow_until_the_cap() -> None:
    b = Backoff(base=0.1, cap=2.0, factor=2.0, rng=lambda: 0.999999)
    delays = [b.next() for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0], rel=1e-5)
    assert b.attempt == 8


def test_full_jitter_spreads_delays_over_zero_to_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25, 0.75])
    b = Backoff(base=1.0, cap=100.0, rng=lambda: next(draws))
    assert [b.next() for _ in range(4)] == [0.0, 1.0, 1.0, 6.0]  # r x 1, 2, 4, 8


def test_reset_after_success_starts_again_from_base() -> None:
    b = Backoff(base=0.5, cap=30.0, rng=lambda: 1.0)
    for _ in range(6):
        b.next()
    assert b.ceiling() == 30.0
    b.reset()
    assert b.attempt == 0 and b.next() == 0.5


def test_many_failures_never_overflow() -> None:
    b = Backoff(base=0.1, cap=10.0, rng=lambda: 1.0)
    for _ in range(5000):
        d = b.next()
    assert d == 10.0


def test_bad_settings_are_refused() -> None:
    for kw in ({"base": 0}, {"base": 5, "cap": 1}, {"factor": 0.5}):
        with pytest.raises(ValueError):
            Backoff(**kw)  # type: ignore[arg-type]


def test_which_failures_are_worth_retrying() -> None:
    assert is_retryable(ConnectionRefusedError()) and is_retryable(EOFError()) and is_retryable(TimeoutError())
    assert is_retryable(err_code=503) and is_retryable(err_code=429) and is_retryable(err_code=408)
    # A bad token, a client bug or a message too large come back on every attempt.
    assert not is_retryable(err_code=401) and not is_retryable(err_code=400) and not is_retryable(err_code=413)
    assert not is_retryable(ValueError("bug"))
