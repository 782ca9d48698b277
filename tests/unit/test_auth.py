from shared.auth import KeyCache, Principal, split_key

ALICE = Principal(key_id="abc", name="webform", role="source")


def test_key_format() -> None:
    assert split_key("lsk_abc_s3cr_et") == ("abc", "s3cr_et")
    for bad in ("", "lsk_", "lsk_abc", "lsk__secret", "xyz_abc_secret", "Bearer lsk_abc_secret"):
        assert split_key(bad) is None


def test_cached_keys_expire_and_are_not_stored_in_plaintext() -> None:
    now = [0.0]
    cache = KeyCache(ttl=30, clock=lambda: now[0])
    cache.put("lsk_abc_secret", ALICE)
    assert cache.get("lsk_abc_secret") == ALICE
    assert cache.get("lsk_abc_other") is None
    assert "lsk_abc_secret" not in repr(cache.__dict__)
    now[0] = 31
    assert cache.get("lsk_abc_secret") is None  # a revoked key stops working within the ttl
