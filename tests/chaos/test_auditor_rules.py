"""The auditor's rules on doctored inputs, without a stack: each must be able to fail."""
from __future__ import annotations

from tests.chaos.auditor import OUTAGE_MARGIN, check_assignment_numbers, check_root_cause


def assigned(no: int, owner: str = "alice") -> tuple[str, dict]:
    return "lead.assigned", {"assignment_no": no, "owner_id": owner}


def reassigned(no: int, owner: str) -> tuple[str, dict]:
    return "lead.reassigned", {"assignment_no": no, "from_owner_id": "x", "to_owner_id": owner}


def dequeued(no: int | None) -> tuple[str, dict]:
    return "lead.dequeued", {"assignment_no": no}


def test_assignment_numbers_clean() -> None:
    assert check_assignment_numbers([assigned(1), reassigned(2, "bob")], "bob", 2) == []
    assert check_assignment_numbers([dequeued(1), assigned(1)], "alice", 1) == []
    assert check_assignment_numbers([], None, None) == []  # queued, never assigned
    assert check_assignment_numbers([dequeued(None), assigned(1)], "alice", 1) == []


def test_an_owned_lead_without_assignment_events() -> None:
    assert check_assignment_numbers([], "alice", 1) == ["owned by alice, but no lead.assigned or lead.reassigned"]
    assert check_assignment_numbers([dequeued(1)], "alice", 1)[0].startswith("owned by alice, but no")


def test_assignment_numbers_used_twice_or_not_1_to_n() -> None:
    assert any("assignment_no 1 used 2 times" in p
               for p in check_assignment_numbers([assigned(1), reassigned(1, "bob")], "bob", 1))
    assert any("assignment numbers [1, 3] are not 1..2" in p
               for p in check_assignment_numbers([assigned(1), reassigned(3, "bob")], "bob", 3))
    assert any("assignment numbers [2] are not 1..1" in p for p in check_assignment_numbers([assigned(2)], "alice", 2))


def test_dequeued_numbers_belong_to_an_assignment() -> None:
    assert any("lead.dequeued announces assignment_no 2" in p
               for p in check_assignment_numbers([assigned(1), dequeued(2)], "alice", 1))
    assert any("lead.dequeued with assignment_no 1 2 times" in p
               for p in check_assignment_numbers([dequeued(1), dequeued(1), assigned(1)], "alice", 1))


def test_the_last_assignment_names_the_stores_owner_and_number() -> None:
    assert any("router store says carol" in p
               for p in check_assignment_numbers([assigned(1), reassigned(2, "bob")], "carol", 2))
    assert any("router store holds assignment_no 3" in p
               for p in check_assignment_numbers([assigned(1), reassigned(2, "bob")], "bob", 3))


def test_root_cause_by_the_tolerance() -> None:
    windows = [("postgres stopped", 100.0, 105.0), ("kill -9 router", 200.0, 210.0)]
    assert check_root_cause(50.0, 50.0 + 60, "system_delay", 60, windows) is None
    assert check_root_cause(50.0, 50.0 + 59.9, "owner_missed", 60, windows) is None
    assert "with root cause owner_missed" in check_root_cause(50.0, 50.0 + 60, "owner_missed", 60, windows)
    assert "yet root cause system_delay" in check_root_cause(50.0, 51.0, "system_delay", 60, windows)
    # Due in an outage of the clock's inputs (or near one): system_delay however soon it left.
    assert check_root_cause(103.0, 130.0, "system_delay", 60, windows) is None
    assert check_root_cause(105.0 + OUTAGE_MARGIN[1], 130.0, "system_delay", 60, windows) is None
    assert check_root_cause(100.0 - OUTAGE_MARGIN[0] - 0.1, 130.0, "system_delay", 60, windows) is not None
    # Due inside it, it is the system's, however soon it left: nobody could log a touch.
    assert "not system_delay" in check_root_cause(103.0, 110.0, "owner_missed", 60, windows)
    assert check_root_cause(102.5, 110.0, "owner_missed", 60, windows) is None  # its start is the clock's to see
    # A router killed is no outage of the clock's inputs.
    assert check_root_cause(205.0, 210.0, "system_delay", 60, windows) is not None
