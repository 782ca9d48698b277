"""The contract's metrics, defined once so every service uses the same names and labels.
No lead, owner or personal data ever goes into a label."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

leads_received = Counter("leadsla_leads_received_total", "Leads accepted", ["source", "tier"])
leads_duplicates = Counter("leadsla_leads_duplicates_total", "Repeat submissions", ["source"])
leads_rejected = Counter("leadsla_leads_rejected_total", "Submissions rejected", ["source", "reason"])
assignments = Counter("leadsla_assignments_total", "Lead assignments", ["team", "method", "reason"])
queue_depth = Gauge("leadsla_queue_depth", "Leads waiting for an owner", ["tier"])
routing_latency = Histogram(
    "leadsla_routing_latency_seconds",
    "Lead received to lead assigned",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
sla_open_timers = Gauge("leadsla_sla_open_timers", "Open SLA timers", ["metric", "tier"])
sla_warnings = Counter("leadsla_sla_warnings_total", "SLA warnings", ["metric", "tier"])
sla_breaches = Counter("leadsla_sla_breaches_total", "SLA breaches", ["metric", "tier", "root_cause"])
sla_met = Counter("leadsla_sla_met_total", "SLAs met", ["metric", "tier"])
sla_breach_lag = Histogram(
    "leadsla_sla_breach_lag_seconds",
    "Breach emit time minus due time",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
sla_clock_watermark_lag = Gauge(
    "leadsla_sla_clock_watermark_lag_seconds", "Now minus the instant up to which the SLA clock has seen its inputs"
)
time_to_first_response = Histogram(
    "leadsla_time_to_first_response_seconds",
    "Clock start to first qualifying touch",
    ["tier", "outcome"],  # outcome: met | breached (late first responses are observed too)
    buckets=(30, 60, 300, 900, 1800, 3600, 4 * 3600, 86400),
)
notifications = Counter("leadsla_notifications_total", "Notification deliveries", ["channel", "status"])
escalations = Counter("leadsla_escalations_total", "Escalations triggered", ["step"])
consumer_lag = Gauge("leadsla_consumer_lag", "Records behind the partition end", ["topic", "group"])
outbox_pending = Gauge("leadsla_outbox_pending", "Outbox rows not yet published")
deadletter = Counter("leadsla_deadletter_total", "Records sent to the dead-letter topic", ["topic", "reason"])
