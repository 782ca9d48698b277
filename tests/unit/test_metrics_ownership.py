"""Each service's /metrics carries the families it updates, plus the shared plumbing."""
from __future__ import annotations

import re

from prometheus_client import REGISTRY

from shared import metrics
from shared.config import parse_config
from shared.settings import SERVICE_PORTS


def families(service: str) -> set[str]:
    return set(re.findall(r"^# TYPE (leadsla_\w+) ", metrics.exposition(service).decode(), re.M))


def test_only_the_owning_service_exports_a_contract_family() -> None:
    assert "leadsla_queue_depth" in families("router")
    assert "leadsla_queue_depth" not in families("sla_clock") | families("reporting") | families("intake")
    assert "leadsla_sla_breach_lag_seconds" in families("sla_clock")
    assert "leadsla_sla_breach_lag_seconds" not in families("router")
    assert "leadsla_leads_received_total" not in families("notifier")


def test_every_family_is_exported_by_some_service_and_plumbing_by_all() -> None:
    everywhere = set.intersection(*(families(s) for s in SERVICE_PORTS))
    assert {"leadsla_outbox_pending"} <= everywhere
    owned = set().union(*(families(s) for s in SERVICE_PORTS))
    assert {f"leadsla_{name}" for name in ("queue_depth", "routing_latency_seconds", "sla_open_timers")} <= owned


def bucket_bounds(histogram) -> list[float]:
    [family] = histogram.collect()
    return sorted({float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")})


def test_waiting_time_histograms_resolve_seconds_and_days() -> None:
    metrics.time_to_first_response.labels("bucket-check", "met").observe(1)
    for histogram in (metrics.time_to_first_response, metrics.routing_latency):
        bounds = [b for b in bucket_bounds(histogram) if b != float("inf")]
        assert bounds[0] <= 10 and bounds[-1] >= 2 * 86400, bounds


# The families every service updates (its consumers, its outbox relay, its supervised tasks); any
# other family belongs to the one service that updates it and must be declared in its registry.
PLUMBING = {
    "leadsla_consumer_lag", "leadsla_outbox_pending", "leadsla_outbox_parked",
    "leadsla_outbox_oldest_pending_age_seconds", "leadsla_worker_restarts_total", "leadsla_deadletter_total",
}


def test_only_the_shared_plumbing_goes_out_from_every_service() -> None:
    everywhere = set.intersection(*(families(s) for s in SERVICE_PORTS))
    # A counter with children also writes a `_created` family of its own.
    assert {f for f in everywhere if not f.endswith("_created")} == PLUMBING


def test_the_sla_clocks_watermark_lag_goes_out_from_the_sla_clock_only() -> None:
    # Set only by the SLA clock: elsewhere it was a flat 0 that looked like a clock seeing everything.
    assert "leadsla_sla_clock_watermark_lag_seconds" in families("sla_clock")
    for service in set(SERVICE_PORTS) - {"sla_clock"}:
        assert "leadsla_sla_clock_watermark_lag_seconds" not in families(service), service


def test_the_clock_creates_every_met_and_breach_series_at_zero_before_the_first_count() -> None:
    """`increase()` misses the first count of a series born inside its window: the first burst of
    a kind of breach (a tier's first owner_missed ones) would not raise LeadslaSlaBreachesRising."""
    from services.sla_clock.domain import ROOT_CAUSES
    from services.sla_clock.entrypoints import zero_counts

    config = parse_config("""
tiers: {default: cold-zero, rules: [{tier: hot-zero, when: {intent: [demo_request]}}]}
sla_policies:
  - {id: p, metrics: {first_response: {target: 5m}, qualification: {target: 1d}}}
""")
    zero_counts(config)
    for metric in ("first_response", "qualification"):
        for tier in ("hot-zero", "cold-zero"):
            labels = {"metric": metric, "tier": tier}
            assert REGISTRY.get_sample_value("leadsla_sla_met_total", labels) == 0
            for cause in ROOT_CAUSES:
                assert REGISTRY.get_sample_value("leadsla_sla_breaches_total", {**labels, "root_cause": cause}) == 0
