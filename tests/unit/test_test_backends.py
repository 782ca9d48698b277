"""Which infrastructure the suites run against, chosen by LEADSLA_TEST_BACKEND."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.backends import Backend, BackendError, choose_backend, pinned_images

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_is_the_default() -> None:
    assert choose_backend({}) == Backend("embedded")


def test_embedded_still_reuses_a_given_database_or_broker() -> None:
    env = {"LEADSLA_TEST_DATABASE_URL": "postgresql://pg/x"}
    assert choose_backend(env) == Backend("embedded", "postgresql://pg/x", None)


def test_external_takes_both_addresses_from_the_environment() -> None:
    env = {"LEADSLA_TEST_BACKEND": "external", "LEADSLA_TEST_DATABASE_URL": "postgresql://pg/x",
           "LEADSLA_TEST_KAFKA_BOOTSTRAP": "kafka:9092"}
    assert choose_backend(env) == Backend("external", "postgresql://pg/x", "kafka:9092")


def test_external_without_addresses_is_refused_with_what_is_missing() -> None:
    with pytest.raises(BackendError, match="LEADSLA_TEST_KAFKA_BOOTSTRAP"):
        choose_backend({"LEADSLA_TEST_BACKEND": "external", "LEADSLA_TEST_DATABASE_URL": "postgresql://pg/x"})


def test_containers_ignore_addresses_in_the_environment() -> None:
    env = {"LEADSLA_TEST_BACKEND": " Containers ", "LEADSLA_TEST_DATABASE_URL": "postgresql://pg/x"}
    assert choose_backend(env) == Backend("containers")


def test_an_unknown_backend_names_the_choices() -> None:
    with pytest.raises(BackendError, match="embedded, containers, external"):
        choose_backend({"LEADSLA_TEST_BACKEND": "docker"})


def test_compose_and_the_containers_backend_pin_the_same_images() -> None:
    images = pinned_images()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, variable in (("postgres", "POSTGRES_IMAGE"), ("kafka", "KAFKA_IMAGE")):
        assert re.fullmatch(r"\$\{" + variable + r"(:\?[^}]*)?\}", compose[service]["image"])
        assert ":" in images[variable] and not images[variable].endswith(":latest")
