import asyncio
import contextlib

import pytest

from shared.auth import KeyCache, Principal, split_key
from shared.db import is_database_unavailable
from tests.support import eventually

ALICE = Principal(key_id="abc", name="webform", role="source")


def test_key_format() -> None:
    assert split_key("lsk_abc_s3cr_et") == ("abc", "s3cr_et")
    for bad in ("", "lsk_", "lsk_abc", "lsk__secret", "xyz_abc_secret", "Bearer lsk_abc_secret"):
        assert split_key(bad) is None


def test_cached_keys_are_trusted_only_while_the_revocation_version_is_fresh() -> None:
    now = [0.0]
    cache = KeyCache(ttl=300, clock=lambda: now[0], check_every=0.5)
    cache.put("lsk_abc_secret", ALICE)
    assert cache.get("lsk_abc_secret") is None  # no version seen yet: nothing is kept
    cache.observe((2, 0, None))
    cache.put("lsk_abc_secret", ALICE)
    assert cache.get("lsk_abc_secret") == ALICE
    assert cache.get("lsk_abc_other") is None
    assert "lsk_abc_secret" not in repr(cache.__dict__)
    now[0] = 0.6
    assert cache.get("lsk_abc_secret") is None  # the version must be confirmed again first
    cache.observe((2, 0, None))
    assert cache.get("lsk_abc_secret") == ALICE  # unchanged version: the entry stands
    cache.observe((2, 1, "2026-11-25T18:00:00Z"))
    assert cache.get("lsk_abc_secret") is None  # a key was revoked somewhere: every entry goes
    cache.observe((2, 1, "2026-11-25T18:00:00Z"))
    cache.put("lsk_abc_secret", ALICE)
    now[0] = 301
    cache.observe((2, 1, "2026-11-25T18:00:00Z"))
    assert cache.get("lsk_abc_secret") is None  # and entries are not kept forever
    cache.observe(None)  # the version could not be read: trust nothing
    assert cache.get("lsk_abc_secret") is None


async def test_requests_waiting_for_a_version_read_that_fails_fail_with_it_without_trying_again() -> None:
    """A frozen database answers nothing: each waiting request trying again in turn made the last
    of a burst wait one database timeout per request before it."""
    now = [0.0]
    cache = KeyCache(clock=lambda: now[0], check_every=0.5)
    attempts, answer = [], asyncio.Event()

    @contextlib.asynccontextmanager
    async def unanswered():
        attempts.append(now[0])
        await answer.wait()
        raise TimeoutError
        yield

    burst = [asyncio.create_task(cache.verify(unanswered, "lsk_abc_secret")) for _ in range(5)]
    await eventually(lambda: attempts, what="the first request to read the version")
    answer.set()
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert attempts == [0.0]
    assert isinstance(results[0], TimeoutError)
    assert all(isinstance(r, ConnectionError) and is_database_unavailable(r) for r in results[1:])
    now[0] = 0.6  # the next check is due: the database is asked again
    with pytest.raises(TimeoutError):
        await cache.verify(unanswered, "lsk_abc_secret")
    assert attempts == [0.0, 0.6]
