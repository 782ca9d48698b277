"""Ports for the embedded stack's servers: chosen where no outgoing connection can take them
before the server binds, and never the same twice."""
from __future__ import annotations

from leadsla.devstack import _ephemeral_low, free_port, port_is_free


def test_ports_are_below_the_ephemeral_range_distinct_and_free() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_low() for port in ports)
    assert all(port_is_free(port) for port in ports)
