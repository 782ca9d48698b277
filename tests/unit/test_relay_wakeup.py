"""The relay's wake-up keeps what this process committed for the relay, within a bound."""
from __future__ import annotations

from shared.eventstore import Appended, StoreRow
from shared.outbox import RelayWakeup


def appended(before: int, count: int) -> Appended:
    return Appended(before, [StoreRow(before + n, "t", "k", b"{}") for n in range(1, count + 1)])


def test_a_commit_wakes_the_relay_and_is_kept_for_it() -> None:
    wakeup = RelayWakeup()
    wakeup.committed(appended(0, 3))
    assert wakeup.is_set()
    assert [a.committed_before for a in wakeup.appends] == [0]


def test_past_the_bound_what_the_relay_has_not_taken_is_forgotten_and_the_store_read_instead() -> None:
    wakeup = RelayWakeup(keep_rows=5)
    wakeup.committed(appended(0, 3))
    wakeup.committed(appended(3, 2))
    wakeup.committed(appended(5, 1))  # 6 rows: the first two appends go
    assert [a.committed_before for a in wakeup.appends] == [5]
    wakeup.taken(1)
    assert wakeup.appends == []
    wakeup.committed(appended(6, 5))  # the rows taken no longer count against the bound
    assert [a.committed_before for a in wakeup.appends] == [6]
