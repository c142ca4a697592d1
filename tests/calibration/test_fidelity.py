"""`yoda fidelity`: every source scored on measured points it was not built from."""
import json

import pytest
from typer.testing import CliRunner

from calibration.fidelity import CHECKS, SOURCES, fidelity, summary
from yoda.cli import app


@pytest.fixture(scope="module")
def report():
    return fidelity()


def test_every_check_for_every_source(report):
    assert set(report["checks"]) == set(CHECKS)
    for check in CHECKS:
        assert set(report["checks"][check]) == set(SOURCES)
        for source in SOURCES:
            s = report["checks"][check][source]
            assert s["points"] > 50
            assert 0 <= s["median"] <= s["p90"] <= s["max"]


def test_measured_transfer_beats_flop_scaling_and_the_roofline(report):
    measured = report["checks"]["transfer"]["measured"]
    baseline = report["transfer_context"]["flop_ratio_baseline"]
    assert measured["points"] == baseline["points"] == 4 * 259  # TP 1/2/4/8, num_tokens 1..4096
    for stat in ("median", "p90", "max"):
        assert measured[stat] < baseline[stat]
        assert measured[stat] < report["checks"]["transfer"]["roofline"][stat]
    assert measured["median"] <= 0.03


def test_measured_beats_roofline_on_held_out_points_and_tp8(report):
    for check in ("leave_out", "tp8"):
        assert report["checks"][check]["measured"]["median"] < report["checks"][check]["roofline"]["median"] / 2


def test_summary_of_known_errors():
    s = summary([1.1, 0.9, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert s == {"median": pytest.approx(0.1), "p90": pytest.approx(0.73), "max": pytest.approx(1.0), "points": 4}
    assert summary([], [])["points"] == 0


def test_cli_json_prints_the_checks():
    result = CliRunner().invoke(app, ["fidelity", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for check in CHECKS:
        for source in SOURCES:
            assert set(data["checks"][check][source]) == {"median", "p90", "max", "points"}
