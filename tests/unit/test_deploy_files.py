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


# CONTRACT.md's metrics with the labels it names: a query written against the contract must keep
# working, so each label is there (a metric may carry more: extending is allowed, renaming is not).
CONTRACT_LABELS = {
    "leads_received_total": {"source", "tier"}, "leads_duplicates_total": {"source"},
    "leads_rejected_total": {"source", "reason"}, "assignments_total": {"team", "method", "reason"},
    "queue_depth": {"tier"}, "routing_latency_seconds": set(), "sla_open_timers": {"metric", "tier"},
    "sla_warnings_total": {"metric", "tier"}, "sla_breaches_total": {"metric", "tier", "root_cause"},
    "sla_met_total": {"metric", "tier"}, "sla_breach_lag_seconds": set(),
    "time_to_first_response_seconds": {"tier"}, "notifications_total": {"channel", "status"},
    "escalations_total": {"step"}, "consumer_lag": {"topic", "group"}, "outbox_pending": set(),
    "deadletter_total": {"topic", "reason"},
}
# No lead or owner ids (nor any personal data) as labels.
FORBIDDEN_LABELS = {"lead_id", "owner_id", "owner", "email", "phone", "recipient", "key", "subject"}


def test_every_contract_metric_has_the_contracts_labels_and_no_ids() -> None:
    assert set(CONTRACT_LABELS) == CONTRACT_METRICS
    by_name = {m._name: m for m in vars(shared.metrics).values() if hasattr(m, "_labelnames")}
    for name, labels in CONTRACT_LABELS.items():
        metric = by_name.get(f"leadsla_{name}") or by_name[f"leadsla_{name.removesuffix('_total')}"]
        assert labels <= set(metric._labelnames), name
    for metric in by_name.values():
        assert not FORBIDDEN_LABELS & set(metric._labelnames), metric._name


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


# ---- docker-compose works when it first starts (issue 11.7) -----------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ONE_SHOT = {"setup"}


def _env_file() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in COMPOSE["services"].items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and service.get("restart") is None, name
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        # Brought back after a crash, an OOM kill or a reboot of the host, the broker and the
        # database as much as the services that wait for them.
        assert service.get("restart") == "unless-stopped", name
    for name in SERVICE_PORTS:  # the services probe their own /readyz on their own port
        assert COMPOSE["services"][name]["healthcheck"]["test"] == ["CMD", "python", "-m", "shared.healthcheck", name]


def test_start_order_follows_health() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, dependency)
            if dependency not in ONE_SHOT:
                assert "healthcheck" in services[dependency], dependency
    for name in SERVICE_PORTS:
        assert {"setup", "postgres", "kafka"} <= set(services[name]["depends_on"]), name
    assert {"receiver", "mailpit"} <= set(services["notifier"]["depends_on"])
    assert set(services["setup"]["depends_on"]) == {"postgres"}


def test_setup_migrates_applies_the_compose_config_and_keeps_an_admin_key_in_a_volume() -> None:
    setup = COMPOSE["services"]["setup"]
    assert setup["entrypoint"] == ["sh", "/deploy/setup.sh"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in setup["volumes"]}
    assert mounts["/keys"] == "keys" and "keys" in COMPOSE["volumes"]
    for target in ("/deploy/setup.sh", "/deploy/compose-config.yaml"):
        assert (ROOT / mounts[target]).is_file(), target
    script = (ROOT / "deploy" / "setup.sh").read_text()
    assert "leadsla migrate" in script and 'leadsla config apply "$config"' in script
    assert "leadsla keys create --admin" in script and "LEADSLA_ADMIN_KEY=" in script
    assert "mkdir -p /keys && chown leadsla /keys" in (ROOT / "Dockerfile").read_text()  # writable by the image's user


def test_the_compose_config_notifies_targets_inside_the_compose_network() -> None:
    from urllib.parse import urlsplit

    from shared.config import parse_config

    config = parse_config((ROOT / "deploy" / "compose-config.yaml").read_text())
    services = COMPOSE["services"]
    webhooks = [c for c in config.channels.values() if c.type == "webhook"]
    mails = [c for c in config.channels.values() if c.type == "email"]
    assert webhooks and mails
    receiver_port = re.search(r'RECEIVER_PORT", "(\d+)"', (ROOT / "deploy" / "receiver.py").read_text()).group(1)
    for channel in webhooks:
        url = urlsplit(channel.url)
        assert (url.hostname, str(url.port)) == ("receiver", receiver_port)
        assert channel.secret_env and channel.secret_env in services["receiver"]["environment"]
        assert channel.secret_env in services["notifier"]["environment"]
    for channel in mails:
        assert (channel.host, channel.port) == ("mailpit", 1025)
    for service in ("receiver", "mailpit"):
        assert service in services and "healthcheck" in services[service]


def test_images_are_pinned() -> None:
    images = _env_file()
    for name, service in COMPOSE["services"].items():
        image = service["image"]
        if image == "leadsla:dev":
            continue
        variable = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", image).group(1)
        tag = images[variable].rsplit(":", 1)[1]
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?", tag), (name, images[variable])  # a release, not a moving tag
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", dockerfile, re.M)  # a patch release


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            pins[canonicalize_name(name)] = version
    return pins


def test_the_image_installs_exact_versions_of_every_runtime_dependency() -> None:
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/constraints.txt ./constraints.txt" in dockerfile
    assert "PIP_CONSTRAINT=/app/constraints.txt" in dockerfile  # reaches the isolated build too
    pins = _constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for raw in project["project"]["dependencies"] + project["build-system"]["requires"]:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name]), (raw, pins.get(name))
    # Closed under dependencies: what a pinned package needs is pinned as well (checked with the
    # metadata installed here, for the packages installed at their pinned version).
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) in pins, f"{name} needs {req.name}, not pinned"


def test_the_healthcheck_probes_readyz(monkeypatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from shared import healthcheck

    status = {"/readyz": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("LEADSLA_HTTP_PORT", str(server.server_address[1]))
        assert healthcheck.main(["intake"]) == 0
        status["/readyz"] = 503
        assert healthcheck.main(["intake"]) == 1
        assert healthcheck.main(["nosuch"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main(["intake"]) == 1  # nobody listening


def test_the_receiver_accepts_only_signed_deliveries(monkeypatch) -> None:
    import importlib.util
    import threading
    import time
    from http.server import ThreadingHTTPServer

    import httpx

    from services.notifier.domain import SIGNATURE_HEADER, sign

    monkeypatch.setenv("LEADSLA_WEBHOOK_SECRET", "s3cret")
    spec = importlib.util.spec_from_file_location("compose_receiver", ROOT / "deploy" / "receiver.py")
    receiver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(receiver)
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    body = json.dumps({"lead_id": "l1", "trigger": {"type": "sla.breached"}}).encode()
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
        signed = httpx.post(f"{url}/hooks/leadsla", content=body,
                            headers={SIGNATURE_HEADER: sign(b"s3cret", body, int(time.time()))})
        forged = httpx.post(f"{url}/hooks/leadsla", content=body,
                            headers={SIGNATURE_HEADER: sign(b"other", body, int(time.time()))})
    finally:
        server.shutdown()
        server.server_close()
    assert (signed.status_code, forged.status_code) == (204, 401)


# ---- what an SRE checks before deploying the compose stack -------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolated(value: str) -> str:
    """A compose value as docker compose renders it with nothing set: each ${VAR:-default} is its default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source of each volume entry."""
    return {m.split(":")[1]: m.split(":")[0] for m in service.get("volumes", [])}


def test_every_leadsla_variable_the_deployment_sets_is_read_by_the_code() -> None:
    from shared.config import parse_config
    from shared.settings import Settings

    fields = {f"LEADSLA_{name.upper()}" for name in Settings.model_fields}
    secrets = {c.secret_env for c in parse_config((ROOT / "deploy" / "compose-config.yaml").read_text()).channels.values()
               if getattr(c, "secret_env", None)}
    set_here = {key for service in COMPOSE["services"].values() for key in (service.get("environment") or {})
                if key.startswith("LEADSLA_")}
    set_here |= set(re.findall(r"\b(LEADSLA_\w+)=", (ROOT / "Dockerfile").read_text()))
    assert set_here and set_here <= fields | secrets, set_here - fields - secrets


def test_the_services_reach_postgres_and_kafka_by_service_name_with_the_credentials_postgres_has() -> None:
    from urllib.parse import urlsplit

    services = COMPOSE["services"]
    postgres = services["postgres"]["environment"]
    kafka = services["kafka"]["environment"]
    for name in [*SERVICE_PORTS, "setup"]:
        env = services[name]["environment"]
        url = urlsplit(_interpolated(env["LEADSLA_DATABASE_URL"]))
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/" + postgres["POSTGRES_DB"]), name
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], _interpolated(postgres["POSTGRES_PASSWORD"]))
        # The same variable sets both sides, so overriding it cannot leave them disagreeing.
        assert _INTERPOLATION.findall(env["LEADSLA_DATABASE_URL"]) == _INTERPOLATION.findall(postgres["POSTGRES_PASSWORD"])
        if name != "setup":
            assert f"PLAINTEXT://{env['LEADSLA_KAFKA_BOOTSTRAP']}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","), name
    port = services["intake"]["environment"]["LEADSLA_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]
    assert f"PLAINTEXT://:{port}" in kafka["KAFKA_LISTENERS"].split(",")


def test_secrets_are_overridable_and_their_defaults_documented_as_dev_only() -> None:
    header = (ROOT / "docker-compose.yml").read_text().split("\nx-leadsla:", 1)[0]
    assert "local try-out only" in header
    for name, service in COMPOSE["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key) or re.search(r"://[^/]*@", str(value)):
                variables = _INTERPOLATION.findall(str(value))
                assert variables, f"{name}: {key} is written into docker-compose.yml"
                for variable, _default in variables:
                    assert variable in header, f"{variable} ({name}: {key}) is not named in the header"


def test_stateful_services_keep_their_data_on_named_volumes() -> None:
    import base64

    services = COMPOSE["services"]
    kafka = services["kafka"]
    data = {
        "postgres": "/var/lib/postgresql/data",
        "kafka": kafka["environment"].get("KAFKA_LOG_DIRS"),  # the image's default is in /tmp
        "prometheus": "/prometheus",
    }
    for name, path in data.items():
        source = _mounts(services[name]).get(path)
        assert source in (COMPOSE.get("volumes") or {}), (name, path)
    # A fixed cluster id: the volume formatted under it is the one the next start finds.
    cluster_id = kafka["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_prometheus_and_grafana_are_wired_to_what_compose_mounts() -> None:
    from urllib.parse import urlsplit

    services = COMPOSE["services"]
    prometheus = _mounts(services["prometheus"])
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to the config file
        assert (ROOT / prometheus["/etc/prometheus/" + rule_file]).resolve() == (ROOT / "deploy" / rule_file).resolve()
    assert (ROOT / prometheus["/etc/prometheus/prometheus.yml"]).resolve() == (ROOT / "deploy" / "prometheus.yml").resolve()

    grafana = _mounts(services["grafana"])
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in services["prometheus"]["ports"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "leadsla.yml").read_text())["providers"]
    dashboards = ROOT / grafana[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["leadsla.json"]
    dashboard = json.loads((dashboards / "leadsla.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]} | {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


_AGGREGATION = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\b(leadsla_[a-z_]+)\s*(?:\{([^}]*)\})?")
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)|\{\{\s*(\w+)\s*\}\}")


def _labels_by_series() -> dict[str, set[str]]:
    """Series name -> the label names it carries (histogram buckets add `le`)."""
    labels = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("leadsla_"):
            continue
        names = set(REGISTRY._names_to_collectors[family.name + SUFFIXES[family.type][0]]._labelnames)
        for suffix in SUFFIXES[family.type]:
            labels[family.name + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    return labels


def test_alert_rules_and_dashboard_only_use_labels_their_metrics_have() -> None:
    known = _labels_by_series()
    target_labels = {"instance", "job"}  # what Prometheus adds to every scraped series
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    queries = [(r["expr"], " ".join(r.get("annotations", {}).values())) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "leadsla.json").read_text())
    queries += [(t["expr"], t.get("legendFormat", "")) for p in dashboard["panels"] for t in p["targets"]]
    for expr, template in queries:
        selectors = _SELECTOR.findall(expr)
        available = set().union(*(known[name] for name, _ in selectors)) | target_labels if selectors else None
        if available is None:
            continue  # Prometheus's own series (up)
        for name, matchers in selectors:
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert used <= known[name] | target_labels, (expr, used - known[name])
        grouped = [set(filter(None, (x.strip() for x in g.split(",")))) for g in _AGGREGATION.findall(expr)]
        for labels in grouped:
            assert labels <= available, (expr, labels - available)
        shown = {a or b for a, b in _TEMPLATE_LABEL.findall(template)} - {"value", "$value"}
        assert shown <= (set().union(*grouped) if grouped else available), (expr, template)


def test_prometheus_sends_firing_alerts_to_an_alertmanager_that_mails_them_inside_the_stack() -> None:
    # Without an `alerting:` section Prometheus evaluates the rules and tells no one.
    services = COMPOSE["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]}
    assert targets == {"alertmanager:9093"}
    alertmanager = services["alertmanager"]
    assert "9093:9093" in alertmanager["ports"] and "healthcheck" in alertmanager
    mounted = ROOT / _mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"]
    assert mounted.resolve() == (ROOT / "deploy" / "alertmanager.yml").resolve()
    routes = yaml.safe_load(mounted.read_text())
    mails = [c for r in routes["receivers"] for c in r.get("email_configs", [])]
    assert mails and all(c["smarthost"] == "mailpit:1025" for c in mails)
    assert set(alertmanager["depends_on"]) == {"mailpit"}


def test_whatever_pages_someone_is_on_the_dashboard() -> None:
    # The one paged opens the dashboard: every series a paging alert watches has a panel.
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    paging = [r["expr"] for g in rules["groups"] for r in g["rules"] if r["labels"]["severity"] == "page"]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "leadsla.json").read_text())
    panels = dashboard["panels"]
    shown = " ".join(t["expr"] for p in panels for t in p["targets"])
    for expr in paging:
        for name in set(re.findall(r"\b(leadsla_[a-z_]+|up)\b", expr)):
            assert re.search(rf"\b{name}\b", shown), f"{name} pages (in {expr!r}) and has no panel"
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in panels
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"


def test_docker_waits_for_a_stopping_service_to_drain() -> None:
    from shared.runtime import SHUTDOWN_DRAIN_SECONDS

    for name in SERVICE_PORTS:
        grace = re.fullmatch(r"(\d+)s", COMPOSE["services"][name].get("stop_grace_period", "10s"))
        assert int(grace.group(1)) >= SHUTDOWN_DRAIN_SECONDS + 5, name  # and time to close after it
