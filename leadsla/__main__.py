"""`python -m leadsla ...`: the `leadsla` command where its entry point is not on PATH."""
from leadsla.cli import app

app(prog_name="leadsla")
