"""Where the integration and e2e suites find PostgreSQL and Kafka: LEADSLA_TEST_BACKEND.

- embedded (default): an embedded PostgreSQL and the Tansu broker, started for the session; a
  component whose LEADSLA_TEST_DATABASE_URL / LEADSLA_TEST_KAFKA_BOOTSTRAP is set is used instead.
- external: both from those two variables (both required).
- containers: Apache Kafka (KRaft) and PostgreSQL containers through testcontainers, with the
  images docker-compose.yml uses (both pinned in the repository's .env). Needs Docker.

The suites' fixtures take only the two addresses; no test knows which backend gave them.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("embedded", "containers", "external")
DATABASE_VAR, KAFKA_VAR, BACKEND_VAR = "LEADSLA_TEST_DATABASE_URL", "LEADSLA_TEST_KAFKA_BOOTSTRAP", "LEADSLA_TEST_BACKEND"
IMAGES_FILE = Path(__file__).resolve().parent.parent / ".env"


class BackendError(Exception):
    """The chosen backend cannot run here; the message is the one line the user sees."""


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str | None = None  # None: start one (embedded) or take the container's
    kafka_bootstrap: str | None = None


def choose_backend(env: Mapping[str, str]) -> Backend:
    name = env.get(BACKEND_VAR, "").strip().lower() or "embedded"
    if name not in BACKENDS:
        raise BackendError(f"{BACKEND_VAR}={name!r}: choose one of {', '.join(BACKENDS)}")
    database, kafka = env.get(DATABASE_VAR) or None, env.get(KAFKA_VAR) or None
    if name == "external" and not (database and kafka):
        raise BackendError(f"{BACKEND_VAR}=external needs both {DATABASE_VAR} and {KAFKA_VAR}")
    if name == "containers":
        return Backend(name)
    return Backend(name, database, kafka)


def pinned_images(path: Path = IMAGES_FILE) -> dict[str, str]:
    """The image versions docker-compose.yml uses, read from the same file."""
    images = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            images[key.strip()] = value.strip()
    return images


def docker_problem() -> str | None:
    """None when a Docker engine answers; else why not, in a few words."""
    try:
        import docker  # installed with testcontainers
    except ImportError:
        return "the testcontainers package is missing: pip install -e '.[dev]'"
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # no socket, no permission, engine down: all mean "no Docker"
        return f"no Docker engine answers ({type(exc).__name__})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def containers() -> Iterator[tuple[str, str]]:
    """Start PostgreSQL and a single-node KRaft Apache Kafka; yield (database_url, bootstrap)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    images = pinned_images()
    port = _free_port()  # Kafka must advertise the address clients use, so the host port is fixed
    kafka = (
        DockerContainer(images["KAFKA_IMAGE"])
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )
    with PostgresContainer(images["POSTGRES_IMAGE"], driver=None) as postgres, kafka:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        yield postgres.get_connection_url(), f"127.0.0.1:{port}"
