"""Prometheus's own checker on what we ship: the config, the alert rules and their unit tests
(deploy/alerts.test.yml), and the /metrics text. Skips with a reason where promtool is missing
(Debian: apt-get install prometheus)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared import metrics
from shared.settings import SERVICE_PORTS

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=120, cwd=DEPLOY)


def test_promtool_accepts_the_prometheus_config_as_it_is_in_the_repo() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_alert_fires_in_its_promtool_unit_test() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}"


@pytest.mark.parametrize("service", SERVICE_PORTS)
def test_each_services_metrics_text_passes_promtool_check_metrics(service: str) -> None:
    # Labelled families only appear once they have a child: give each one.
    metrics.deadletter.labels("leads.intake", "undecodable")
    metrics.consumer_lag.labels("leads.intake", "reporting")
    metrics.time_to_first_response.labels("A", "met")
    metrics.sla_breaches.labels("first_response", "A", "owner_missed")
    result = promtool("check", "metrics", stdin=metrics.exposition(service))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (Debian package `prometheus-alertmanager`)")
def test_amtool_accepts_the_alertmanager_config() -> None:
    result = subprocess.run(["amtool", "check-config", "alertmanager.yml"], capture_output=True, timeout=60, cwd=DEPLOY)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
