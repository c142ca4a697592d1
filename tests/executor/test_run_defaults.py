"""`yoda run` with no options completes on the CPU (the first hour of a new user, after the [cpu] install)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from yoda.cli import app


@pytest.mark.slow
def test_run_with_no_options_serves_the_default_sample_on_the_cpu() -> None:
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "10: 10 served, 0 refused" in out and "cpu executor" in out
    assert "default workload: the first 10 requests" in out and "cut to tiny's 4,096-token context" in out
    assert "run time" in out and "simulated" not in out  # a real run is not labelled a simulation
