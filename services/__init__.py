"""The registry of leadsla's services: the one place that lists them.

Shared code (schemas, ports, metric ownership, the CLI) reads this; it never names a service
itself. A service's package holds `bootstrap.py` (wiring) and its Postgres schema has the
service's name.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    port: int
    # Attribute names in shared.metrics of the families only this service exports; the shared
    # plumbing families (consumer lag, outbox, dead letters) go out from every service.
    owned_metrics: tuple[str, ...] = ()

    @property
    def schema(self) -> str:
        return self.name


SERVICES: dict[str, ServiceInfo] = {
    s.name: s
    for s in (
        ServiceInfo("intake", 8001, ("leads_received", "leads_duplicates", "leads_rejected")),
        ServiceInfo("router", 8002, ("assignments", "queue_depth", "queue_oldest_wait", "routing_latency")),
        ServiceInfo(
            "sla_clock",
            8003,
            ("sla_open_timers", "sla_warnings", "sla_breaches", "sla_met", "sla_breach_lag",
             "time_to_first_response", "sla_clock_watermark_lag"),
        ),
        ServiceInfo("notifier", 8004, ("notifications", "escalations")),
        # Overdue timers are measured outside the SLA clock, so they show when the clock has stopped.
        ServiceInfo("reporting", 8005, ("sla_overdue_timers",)),
    )
}

SERVICE_NAMES: tuple[str, ...] = tuple(SERVICES)
SERVICE_PORTS: dict[str, int] = {s.name: s.port for s in SERVICES.values()}
