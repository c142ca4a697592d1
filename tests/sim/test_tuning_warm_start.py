"""run_tuning's phases: the grid (coarse, first seed), a lead search per shortlisted point, then the other
seeds and admission variants started at the lead's result, and cells warm-started from another cell's lead.
A fake workload whose goodput is a known step in the rate keeps the searches exact and instant."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from sim.run import SimConfig
from sim.tuning import FINE_TOL, TuneCell, num_searches, run_tuning
from yoda.request import SLO, RequestRecord

SLO_ = SLO(ttft_ms=1000, tbt_ms=50)


def _fleet(ok: bool) -> list[RequestRecord]:
    out = []
    for i in range(20):
        times = [0.5 * i + (0.1 if ok else 5.0) + 0.01 * k for k in range(10)]
        out.append(RequestRecord(i, 0.5 * i, 100, 10, token_at=times, finished_at=times[-1]))
    return out


@dataclass(frozen=True)
class StepWorkload:
    """Goodput = base x (1 + 0.1 x seed) x the chunk knob's factor; each call to a run is counted."""

    base: float

    def runner(self, cfg, seed: int, criterion: str = "strict"):
        cap = self.base * (1 + 0.1 * seed) * {None: 1.0, 256: 1.5, 512: 0.5}[
            cfg.policy_options.get("long_prefill_token_threshold")]
        return (lambda rate: _fleet(rate <= cap)), 1.0


def _cell(base: float, grid=None, variants=({"admission": "fcfs"}, {"admission": "deadline"}), warm_from=None):
    cfg = SimConfig(policy="chunked", slo=SLO_, record_timeline=False)
    return TuneCell(StepWorkload(base), cfg, (0, 1, 2), grid or [{}], start_rps=1.0, top=1, variants=variants,
                    warm_from=warm_from)


GRID = [{}, {"long_prefill_token_threshold": 256}, {"long_prefill_token_threshold": 512}]


def test_warm_starts_find_each_seeds_goodput_within_tolerance_with_fewer_probes():
    cells = [_cell(40.0, GRID), _cell(40.0, [{}], ({},), warm_from=0), _cell(40.0, [{}], ({},))]
    done = []
    (tuned, other), (warm,), (cold,) = run_tuning(cells, 1, lambda: done.append(1))
    assert len(done) == num_searches(cells)
    assert tuned["config"]["long_prefill_token_threshold"] == 256  # the best grid point
    for row, factor in ((tuned, 1.5), (other, 1.5), (warm, 1.0), (cold, 1.0)):
        for seed, got in zip((0, 1, 2), row["goodput_rps_per_seed"]):
            truth = 40.0 * (1 + 0.1 * seed) * factor
            assert truth * (1 - 2 * FINE_TOL) <= got <= truth
    # the warm cell started at tuned's lead (60 req/s, past its own 40): fewer probes than doubling from 1
    assert warm["num_probes"] < cold["num_probes"]


def test_warm_from_must_name_another_cold_cell():
    with pytest.raises(ValueError, match="warm_from"):
        run_tuning([_cell(10.0, warm_from=0)], 1)
    with pytest.raises(ValueError, match="warm_from"):
        run_tuning([_cell(10.0), _cell(10.0, warm_from=0), _cell(10.0, warm_from=1)], 1)
    with pytest.raises(ValueError, match="warm_from"):
        run_tuning([_cell(10.0, warm_from=5)], 1)
