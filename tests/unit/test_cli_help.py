"""What `leadsla ... --help` tells an operator: the commands and options the contract names, and
what each reads (no database or broker is needed to ask)."""
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadsla.cli import app
from services import SERVICE_NAMES


def help_of(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_replay_help_names_the_services_and_where_reporting_rebuilds_from() -> None:
    text = help_of("replay")
    assert all(name in text for name in SERVICE_NAMES)
    assert "timeline" in text and "--verify" in text


def test_config_apply_help_offers_the_dry_run() -> None:
    assert "--dry-run" in help_of("config", "apply")



def test_python_dash_m_leadsla_is_the_leadsla_command() -> None:
    """`python -m leadsla dev` (a checkout without the entry point on PATH) said "No module named
    leadsla.__main__"."""
    root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-m", "leadsla", "replay", "--help"], cwd=root, capture_output=True,
                            text=True, env={"PYTHONPATH": str(root), "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: leadsla replay" in " ".join(result.stdout.split())


def test_command_lists_flow_each_summary_instead_of_breaking_it_where_the_docstring_does() -> None:
    """`leadsla --help` listed `replay` as "... its read │ models, from its │ timeline of ...": the
    docstring's own line breaks, kept, left half-empty lines in the middle of a sentence."""
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "its read models, from its timeline of the events" in listing, listing
    config = CliRunner().invoke(app, ["config", "--help"], env={"COLUMNS": "200"}).output
    assert "if it changed); running services pick it up" in config, config


@pytest.mark.parametrize(("url", "named"), [
    # `leadsla dev`'s URL: a socket directory, no host; it was named as localhost:5432.
    ("postgresql://ghost:@/postgres?host=/srv/app/.leadsla/dev/pg", "/srv/app/.leadsla/dev/pg (socket)/postgres"),
    ("postgresql://u:secret@db.example:6543/leads", "db.example:6543/leads"),
    ("postgresql:///leads", "localhost:5432/leads"),
])
def test_a_database_error_names_where_the_url_points_without_its_password(url: str, named: str) -> None:
    from sqlalchemy.engine import make_url

    from leadsla.cli import _database_address

    assert _database_address(make_url(url)) == named
