"""The contract's metrics, defined once so every service uses the same names and labels.
No lead, owner or personal data ever goes into a label."""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

from services import SERVICES

leads_received = Counter("leadsla_leads_received_total", "Leads accepted", ["source", "tier"])
leads_duplicates = Counter("leadsla_leads_duplicates_total", "Repeat submissions", ["source"])
leads_rejected = Counter("leadsla_leads_rejected_total", "Submissions rejected", ["source", "reason"])
assignments = Counter("leadsla_assignments_total", "Lead assignments", ["team", "method", "reason"])
queue_depth = Gauge("leadsla_queue_depth", "Leads waiting for an owner", ["tier"])
# No SLA timer runs while a lead waits for an owner (start_on: assigned): this is how long it has.
queue_oldest_wait = Gauge("leadsla_queue_oldest_wait_seconds", "How long the longest-waiting queued lead has waited",
                          ["tier"])
routing_latency = Histogram(
    "leadsla_routing_latency_seconds",
    "Lead received to lead assigned",
    # Seconds when someone is free; hours or days when the lead waits in the queue.
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 4 * 3600, 86400, 3 * 86400),
)
sla_open_timers = Gauge("leadsla_sla_open_timers", "Open SLA timers", ["metric", "tier"])
sla_warnings = Counter("leadsla_sla_warnings_total", "SLA warnings", ["metric", "tier"])
sla_breaches = Counter("leadsla_sla_breaches_total", "SLA breaches", ["metric", "tier", "root_cause"])
sla_met = Counter("leadsla_sla_met_total", "SLAs met", ["metric", "tier"])
sla_breach_lag = Histogram(
    "leadsla_sla_breach_lag_seconds",
    "Breach emit time minus due time",
    # Up to an hour: a stopped clock that restarts fires its overdue timers that late.
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
sla_clock_watermark_lag = Gauge(
    "leadsla_sla_clock_watermark_lag_seconds", "Now minus the instant up to which the SLA clock has seen its inputs"
)
time_to_first_response = Histogram(
    "leadsla_time_to_first_response_seconds",
    "Clock start to first qualifying touch",
    ["tier", "outcome"],  # outcome: met | breached (late first responses are observed too)
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 86400, 2 * 86400, 4 * 86400, 7 * 86400),
)
notifications = Counter("leadsla_notifications_total", "Notification deliveries", ["channel", "status"])
escalations = Counter("leadsla_escalations_total", "Escalations triggered", ["step"])
consumer_lag = Gauge("leadsla_consumer_lag", "Records behind the partition ends, summed over this member's partitions",
                     ["topic", "group"])
outbox_pending = Gauge("leadsla_outbox_pending", "Outbox rows not yet published (parked ones included)")
outbox_parked = Gauge("leadsla_outbox_parked", "Outbox rows the broker refused for good, waiting for an operator")
outbox_oldest_pending_age = Gauge(
    "leadsla_outbox_oldest_pending_age_seconds", "Age of the oldest outbox row not yet published"
)
worker_restarts = Counter("leadsla_worker_restarts_total", "Background tasks restarted after a crash", ["task"])
deadletter = Counter("leadsla_deadletter_total", "Records sent to the dead-letter topic", ["topic", "reason"])
sla_overdue_timers = Gauge(
    "leadsla_sla_overdue_timers",
    "Open SLA timers past their deadline with no breach seen (by reporting): a stopped SLA clock",
    ["metric", "tier"],
)

# Which service exports which family (declared in the services registry). A family a process
# never updates would show a misleading flat zero on its /metrics (and double series in sums).
# Families not listed (the shared plumbing: consumer lag, outbox, dead letters) go out from
# every service.
OWNERS = {
    family.name: service.name
    for service in SERVICES.values()
    for attribute in service.owned_metrics
    for family in globals()[attribute].describe()
}


class _OwnedBy:
    def __init__(self, service: str) -> None:
        self.service = service

    def collect(self):  # noqa: ANN201 - the registry protocol of prometheus_client
        for family in REGISTRY.collect():
            if OWNERS.get(family.name, self.service) == self.service:
                yield family


def exposition(service: str) -> bytes:
    """The /metrics text of one service: its own families and the shared ones."""
    return generate_latest(_OwnedBy(service))  # type: ignore[arg-type]
