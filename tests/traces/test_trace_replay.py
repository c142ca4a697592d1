from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trace_helpers import MINISWE, MOONCAKE_CONV, load_shared, req

from traces import (infer_sessions, mean_rate_rps, original_times, overlap_sessions, rescale_to_rate,
                    retime_gamma, retime_poisson, scale_rate, sharegpt_like, spread_buckets)
from yoda.request import Request


def _gaps(requests: list[Request]) -> np.ndarray:
    return np.diff([r.arrival_at for r in requests])


def _cv(x: np.ndarray) -> float:
    return float(x.std() / x.mean())


def _by_id(requests: list[Request]) -> dict[int, tuple[int, int]]:
    return {r.request_id: (r.prompt_len, r.output_len) for r in requests}


def _flat(n: int, gap_s: float = 1.0) -> list[Request]:
    return [req(i, i * gap_s, 100) for i in range(n)]


def test_original_times_shift_to_zero() -> None:
    reqs = [req(0, 5.0, 10), req(1, 7.5, 10)]
    assert [r.arrival_at for r in original_times(reqs)] == [0.0, 2.5]


def test_spread_buckets_stays_in_bucket_and_keeps_order() -> None:
    reqs = load_shared(MOONCAKE_CONV).requests
    spread = spread_buckets(reqs, rng=7)
    assert [r.request_id for r in spread] == [r.request_id for r in reqs]  # order inside buckets kept
    offsets = np.array([b.arrival_at - a.arrival_at for a, b in zip(reqs, spread)])
    assert offsets.min() >= 0 and offsets.max() < 3.0
    assert len({r.arrival_at for r in spread}) == len(spread)
    assert offsets.mean() == pytest.approx(1.5, abs=0.1)  # uniform over ~3 s buckets
    assert spread == spread_buckets(reqs, rng=7)
    assert spread != spread_buckets(reqs, rng=8)


def test_spread_buckets_forced_width() -> None:
    reqs = [req(i, 0.0, 10) for i in range(100)]
    spread = spread_buckets(reqs, rng=np.random.default_rng(0), bucket_s=2.0)
    times = [r.arrival_at for r in spread]
    assert 0 <= min(times) and max(times) < 2.0 and times == sorted(times)


def test_rescale_hits_target_rate_and_keeps_shape() -> None:
    reqs = spread_buckets(load_shared(MOONCAKE_CONV).requests, rng=0)
    for target in (0.5, 3.0, 20.0):
        out = rescale_to_rate(reqs, target)
        assert mean_rate_rps(out) == pytest.approx(target, rel=0.01)
        assert np.allclose(_gaps(out) * target, _gaps(reqs) * mean_rate_rps(reqs))
        assert _cv(_gaps(out)) == pytest.approx(_cv(_gaps(reqs)), rel=1e-6)
        assert _by_id(out) == _by_id(reqs)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=3, max_size=40), st.floats(0.1, 10.0))
def test_scale_rate_divides_every_gap(times: list[float], factor: float) -> None:
    reqs = [req(i, t, 10) for i, t in enumerate(sorted(times))]
    out = scale_rate(reqs, factor)
    assert np.allclose(_gaps(out), _gaps(reqs) / factor)
    assert out[0].arrival_at == reqs[0].arrival_at
    assert [r.request_id for r in out] == [r.request_id for r in reqs]


def test_scale_rate_rejects_bad_factor() -> None:
    with pytest.raises(ValueError):
        scale_rate(_flat(3), 0.0)
    with pytest.raises(ValueError, match="all arrive at once"):
        rescale_to_rate([req(0, 1.0, 10), req(1, 1.0, 10)], 2.0)


def test_retime_poisson() -> None:
    out = retime_poisson(_flat(20_000), rate_rps=10.0, rng=1)
    assert mean_rate_rps(out) == pytest.approx(10.0, rel=0.03)
    assert _cv(_gaps(out)) == pytest.approx(1.0, abs=0.05)
    assert [r.request_id for r in out] == list(range(20_000))


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_retime_gamma_cv(cv: float) -> None:
    out = retime_gamma(_flat(20_000), rate_rps=5.0, cv=cv, rng=2)
    assert mean_rate_rps(out) == pytest.approx(5.0, rel=0.05)
    assert _cv(_gaps(out)) == pytest.approx(cv, rel=0.1)


def _session_offsets(requests: list[Request]) -> dict[str, list[float]]:
    turns: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        turns[r.session_id].append(r)
    return {s: [r.arrival_at - rs[0].arrival_at for r in rs] for s, rs in turns.items()}


def test_overlap_sessions_keeps_intra_session_gaps() -> None:
    reqs = load_shared(MINISWE).requests
    out = overlap_sessions(reqs, session_rate_rps=0.5, rng=3)
    before, after = _session_offsets(reqs), _session_offsets(out)
    assert before.keys() == after.keys()
    for s in before:
        assert np.allclose(before[s], after[s])
    assert out[-1].arrival_at < reqs[-1].arrival_at  # 20 sessions at 0.5/s overlap: much shorter
    think_s = {r.request_id: r.think_time_s for r in reqs}
    assert [r.think_time_s for r in out] == pytest.approx([think_s[r.request_id] for r in out])
    assert _by_id(out) == _by_id(reqs)


def test_overlap_sessions_starts_at_poisson_times() -> None:
    reqs = sharegpt_like(num_sessions=1500, session_rate_rps=100.0, rng=0)
    out = overlap_sessions(reqs, session_rate_rps=2.0, rng=4)
    firsts = sorted(r.arrival_at for r in out if r.turn == 1)
    assert mean_rate_rps([req(i, t, 1) for i, t in enumerate(firsts)]) == pytest.approx(2.0, rel=0.05)
    lone = overlap_sessions([req(0, 0.0, 5), req(1, 0.0, 5)], session_rate_rps=1.0, rng=0)
    assert lone[0].arrival_at == 0.0 and lone[1].arrival_at > 0.0  # no session: each is its own


def test_infer_sessions_hand_built() -> None:
    reqs = [
        req(0, 0.0, 1536, (0, 1, 2)),  # 3 full blocks
        req(1, 1.0, 2400, (0, 1, 2, 3, 4)),  # extends request 0's full blocks
        req(2, 2.0, 1400, (0, 5, 6)),  # shares only the system block 0: new session
        req(3, 3.0, 2500, (0, 1, 2, 3, 7)),  # extends request 1 (4 full blocks), the longest parent
        req(4, 4.0, 1100, (0, 1, 9)),  # shares 2 blocks, but no earlier request ends there
        req(5, 6.0, 1100, (0, 5, 6)),  # extends request 2's 2 full blocks
    ]
    out = infer_sessions(reqs)
    assert [(r.session_id, r.turn) for r in out] == [
        ("s0", 1), ("s0", 2), ("s1", 1), ("s0", 3), ("s2", 1), ("s1", 2)]
    assert [r.think_time_s for r in out] == [0.0, 1.0, 0.0, 2.0, 0.0, 4.0]
    joined = infer_sessions(reqs[:3] + [req(6, 5.0, 600, (0, 8))], min_shared_blocks=1)
    assert [r.session_id for r in joined] == ["s0", "s0", "s1", "s2"]  # request 6 ends no chain of 1


def test_infer_sessions_on_mooncake() -> None:
    out = infer_sessions(load_shared(MOONCAKE_CONV).requests)
    continued = sum(r.turn > 1 for r in out) / len(out)
    assert continued == pytest.approx(0.33, abs=0.02)  # README: "about 31%"
    assert len({r.session_id for r in out}) == sum(r.turn == 1 for r in out)
