"""docker-compose, Prometheus, alert rules and the dashboard cannot run here (no Docker engine),
so they are kept honest by reading them: they parse, and every metric they name exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers the metrics
from shared.settings import SERVICE_PORTS

ROOT = Path(__file__).parents[2]
CONTRACT_METRICS = {
    "leads_received_total", "leads_duplicates_total", "leads_rejected_total", "assignments_total", "queue_depth",
    "routing_latency_seconds", "sla_open_timers", "sla_warnings_total", "sla_breaches_total", "sla_met_total",
    "sla_breach_lag_seconds", "time_to_first_response_seconds", "notifications_total", "escalations_total",
    "consumer_lag", "outbox_pending", "deadletter_total",
}


SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exposed_names() -> set[str]:
    """Every series name the registered leadsla metrics can expose, by metric type."""
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("leadsla_")
        for suffix in SUFFIXES[family.type]
    }


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bleadsla_[a-z_]+", text))


def test_every_contract_metric_is_defined() -> None:
    names = exposed_names()
    missing = {m for m in CONTRACT_METRICS if f"leadsla_{m}" not in names and f"leadsla_{m}_bucket" not in names}
    assert not missing


def test_compose_runs_every_service_from_one_image() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "kafka", "prometheus", "grafana", "setup"} <= set(services)
    for name, port in SERVICE_PORTS.items():
        assert services[name]["command"] == ["serve", name]
        assert services[name]["ports"] == [f"{port}:{port}"]
        assert services[name]["image"] == "leadsla:dev"
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{port}" for name, port in SERVICE_PORTS.items()}


def test_alert_rules_and_dashboard_only_name_real_metrics() -> None:
    known = exposed_names()
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "leadsla.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = set().union(*(metric_names_in(e) for e in exprs))
    assert named and named <= known, named - known


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
