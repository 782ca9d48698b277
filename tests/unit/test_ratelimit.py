"""Rate limits per key: token buckets (pure, time passed in)."""
import pytest

from shared.ratelimit import KeyLimiter, TokenBucket


def test_a_token_bucket_allows_bursts_then_says_when_to_retry() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0  # a token came back
    assert bucket.take(10) == 0 and bucket.tokens == pytest.approx(2)  # never more than the burst


def test_each_key_has_its_own_bucket() -> None:
    limiter = KeyLimiter()
    assert [limiter.wait("a", 0, 1, 2) for _ in range(3)] == [0, 0, pytest.approx(1)]
    assert limiter.wait("b", 0, 1, 2) == 0  # another key is not held back by the first
    assert limiter.wait("a", 1, 1, 2) == 0


def test_a_bucket_whose_size_changed_starts_anew() -> None:
    # A configuration applied with another rate or burst for the key's source.
    limiter = KeyLimiter()
    assert [limiter.wait("a", 0, 1, 1) for _ in range(2)] == [0, pytest.approx(1)]
    assert limiter.wait("a", 0, 1, 5) == 0
