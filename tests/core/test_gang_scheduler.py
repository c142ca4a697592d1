"""The Yoda gang scheduler, driven by a tiny fake backend whose launch times are the policy's own solo
estimates (so every choice can be checked against the estimator exactly), and through the simulator.

Hand-made estimator (ms, s = SMs, B = batch, K = KV tokens / 1024):
    prefill(s) = (2 + 50 * new/1024) * 132 / s          decode(s) = 4 + (528 + 20 B + 6.6 K) / s
so a one-request decode takes about 37.3 ms on 16 SMs and 20.6 ms on 32; guards stay at 1.3 (decay 0).
"""
import math

import pytest
from hypothesis import given, settings, strategies as st

from sim.run import SimConfig, simulate
from yoda.backend import DECODE, PREFILL, Launch
from yoda.estimator import Estimator
from yoda.gang_scheduler import ABLATIONS, GangScheduler
from yoda.guard import GuardTable
from yoda.partitions import PartitionMenu
from yoda.request import SLO, Request
from yoda.scheduler import SchedulerConfig

NUM_SMS, NUM_LAYERS = 132, 8
MENU = PartitionMenu(NUM_SMS)
SPLIT_DECODE_SMS = [p.decode_sms for p in MENU.splits]  # 16, 32, ..., 112


def estimator() -> Estimator:
    sizes = sorted(set(MENU.decode_sizes()) | set(MENU.prefill_sizes()))
    return Estimator(prefill_coef={s: {0: (0.0, 0.0, 50 * NUM_SMS / s, 2 * NUM_SMS / s)} for s in sizes},
                     decode_coef={s: (6.6 / s, 20 / s, 4 + 528 / s) for s in sizes},
                     decode_guard=GuardTable(decay=0.0), prefill_guard=GuardTable(decay=0.0))


TRUTH = estimator()


# the paper's policy: options that switch off what the default adds beyond it
PAPER = {"ttft_aware_split": False, "piggyback": False, "decode_bound_split": False}


def duration_s(launch: Launch) -> float:
    """Solo time by the estimator; a mixed launch (decode + prefill chunks on one lane) costs both."""
    t = TRUTH.decode_s(len(launch.decode_ids), launch.decode_kv_len, launch.num_sms) if launch.decode_ids else 0.0
    if launch.prefill:
        frac = (launch.layer_end - launch.layer_start) / launch.num_layers
        t += TRUTH.prefill_s([c.num_new for c in launch.prefill], [c.start_len for c in launch.prefill],
                             launch.num_sms) * frac
    return t


class Decision:
    """What the scheduler knew just before a decision, and what it launched."""

    def __init__(self, sched, now, busy):
        self.now, self.busy = now, busy
        self.pending = sched._prefill_pending()
        self.job_tokens = sched._job_tokens()
        self.decode_bound = sched._decode_bound()
        self.launches: list[Launch] = []

    def lane(self, lane: str) -> Launch | None:
        return next((l for l in self.launches if l.lane == lane), None)


def drive(sched, requests) -> list[Decision]:
    """Event loop without simpy: deliver completions and arrivals in time order, one decision per instant."""
    arrivals = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    running: dict[str, tuple[float, Launch]] = {}
    decisions: list[Decision] = []
    i = 0
    for _ in range(100_000):
        nxt = min([e for e, _ in running.values()] + [arrivals[i].arrival_at if i < len(arrivals) else math.inf])
        if nxt == math.inf:
            break
        now = nxt
        for lane in sorted(running):
            if running[lane][0] == now:
                sched.on_launch_done(running.pop(lane)[1], now)
                sched.check_invariants()
        while i < len(arrivals) and arrivals[i].arrival_at == now:
            sched.on_arrival(arrivals[i], now)
            i += 1
        d = Decision(sched, now, {lane: l for lane, (_, l) in running.items()})
        d.launches = list(sched.schedule(now, d.busy))
        for launch in d.launches:
            assert launch.lane not in running
            running[launch.lane] = (now + duration_s(launch), launch)
        decisions.append(d)
        assert sum(l.num_sms for _, l in running.values()) <= NUM_SMS
        sched.check_invariants()
        assert running or i < len(arrivals) or not sched.has_work(), f"stalled at {now}: {sorted(sched.states)}"
    assert not running and not sched.has_work()
    for r in sched.records:
        assert r.rejected_reason is not None or len(r.token_at) == r.output_len
    return decisions


def launches(decisions: list[Decision], lane: str) -> list[Launch]:
    return [l for d in decisions for l in d.launches if l.lane == lane]


def gang(slo=SLO(ttft_ms=1000, tbt_ms=50), kv_blocks=1100, **options) -> GangScheduler:
    cfg = SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kv_blocks, block_size=16)
    return GangScheduler(cfg, slo, estimator(), **options)


def mixed_workload(n=20, gap_s=0.03):
    return [Request(i, i * gap_s, 200 + 300 * (i % 5), 10 + 7 * (i % 4)) for i in range(n)]


def fewest_meeting_tbt(sched, launch: Launch, job_tokens: tuple[int, int]) -> int | None:
    """The fewest split decode SMs whose guarded estimate meets the TBT target (with its margin)."""
    target = sched.slo.tbt_s * sched.opts.tbt_margin
    pn, pr = job_tokens
    return next((d for d in SPLIT_DECODE_SMS if sched.est.decode_guarded_s(
        len(launch.decode_ids), launch.decode_kv_len, d, pn, pr) <= target), None)


# ---- SM partitions ---------------------------------------------------------------------------------------
def test_decode_alone_gets_the_whole_gpu():
    decisions = drive(gang(), [Request(0, 0.0, 100, 30)])
    decodes = launches(decisions, DECODE)
    assert len(decodes) == 29 and all(l.num_sms == NUM_SMS for l in decodes)
    prefill = launches(decisions, PREFILL)
    assert len(prefill) == 1 and prefill[0].num_sms == NUM_SMS and prefill[0].layer_end == NUM_LAYERS


@pytest.mark.parametrize("tbt_ms", [50, 80])
def test_with_prefill_pending_decode_gets_the_fewest_sms_meeting_tbt(tbt_ms):
    # the paper's rule (DESIGN 4.4); the default policy may give decode more, see the next test
    s = gang(slo=SLO(ttft_ms=1000, tbt_ms=tbt_ms), **PAPER)
    decisions = drive(s, mixed_workload())
    checked = set()
    for d in decisions:
        dec = d.lane(DECODE)
        if dec is None:
            continue
        if not d.pending and PREFILL not in d.busy:
            assert dec.num_sms == NUM_SMS, "decode alone must get the whole GPU"
        elif d.pending:
            want = fewest_meeting_tbt(s, dec, d.job_tokens)
            free = NUM_SMS - (d.busy[PREFILL].num_sms if PREFILL in d.busy else 0)
            assert dec.num_sms == (want if want <= free else MENU.largest_decode_within(free)), (d.now, want)
            checked.add(want)
    # a one-request batch needs 32 SMs for 50 ms (guarded 16 SMs: 48.4 > 45) and 16 for 80 ms
    assert min(checked) == (32 if tbt_ms == 50 else 16)
    assert s.counters["tbt_unmeetable"] == 0


@pytest.mark.parametrize("tbt_ms", [50, 80])
def test_default_policy_never_gives_decode_fewer_sms_than_tbt_needs_unless_squeezed(tbt_ms):
    s = gang(slo=SLO(ttft_ms=1000, tbt_ms=tbt_ms))
    decisions = drive(s, mixed_workload())
    checked = 0
    for d in decisions:
        dec = d.lane(DECODE)
        if dec is None or not d.pending:
            continue
        want = fewest_meeting_tbt(s, dec, d.job_tokens)
        free = NUM_SMS - (d.busy[PREFILL].num_sms if PREFILL in d.busy else 0)
        assert dec.num_sms >= min(want, MENU.largest_decode_within(free)), (d.now, dec.num_sms, want)
        assert dec.num_sms in MENU.decode_sizes()
        checked += 1
    assert checked > 10


def test_a_decode_bound_gpu_gives_decode_what_the_admissible_prefills_can_spare():
    # the decode batch holds 4: the rest of a burst waits for decodes to finish, so decode speed sets the
    # throughput. The paper's rule still gives decode the fewest SMs meeting TBT; decode_bound_split gives
    # it what the prefills that can be admitted now spare by their TTFT deadlines.
    def run(bound: bool):
        cfg = SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=1100, block_size=16, max_batch=4)
        s = GangScheduler(cfg, SLO(ttft_ms=3000, tbt_ms=80), estimator(), piggyback=False, decode_bound_split=bound)
        return s, drive(s, [Request(i, i * 0.02, 300, 40) for i in range(16)])

    for bound in (False, True):
        s, decisions = run(bound)
        wider = 0
        for d in decisions:
            dec = d.lane(DECODE)
            if dec is None or not d.pending or PREFILL in d.busy:
                continue
            want = fewest_meeting_tbt(s, dec, d.job_tokens)
            assert dec.num_sms >= want
            wider += dec.num_sms > want
            if not bound or not d.decode_bound:
                assert dec.num_sms == want, (bound, d.now)
        assert (wider > 0) == bound
    # NOTE: whether this pays depends on decode being memory-bound (its step barely slows on fewer SMs
    # beyond the bandwidth knee, see sim.latency); this toy estimator scales decode with 1/SMs, so the
    # makespan is not asserted here. Measured: 70B TP8 Azure goodput 21.5 -> 24 req/s (results/NOTES.md).


@pytest.mark.xfail(strict=True, reason="choose_decode_sms skips the contention guard while a fully launched "
                   "prefill still runs on the prefill lane: _job_tokens() returns (0, 0) once the job's last "
                   "layers are launched, so decode_guarded_s falls back to the solo estimate")
def test_guard_applies_while_the_last_prefill_layers_run():
    s = gang(**PAPER)
    decisions = drive(s, mixed_workload())
    beside = [(d, d.lane(DECODE)) for d in decisions if d.lane(DECODE) and PREFILL in d.busy and not d.pending]
    assert beside
    for d, dec in beside:
        p = d.busy[PREFILL]
        running_tokens = (p.num_prefill_tokens, sum(c.start_len for c in p.prefill))
        want = fewest_meeting_tbt(s, dec, running_tokens)
        assert dec.num_sms >= min(want, MENU.largest_decode_within(NUM_SMS - p.num_sms)), (d.now, dec.num_sms, want)


@pytest.mark.parametrize("options", [PAPER, {}], ids=["paper", "default"])
def test_decode_partition_grows_with_its_batch_under_continuous_prefill(options):
    # regression: each prefill group took every SM the running decode left and each decode step only what the
    # running prefill left, so a squeezed decode partition stayed squeezed for as long as prefill was busy
    # (49 steps on 16 SMs where 48 were needed; TBT gaps of 76 ms against a 50 ms target).
    # 24 decoding requests need 48 decode SMs beside a prefill: 1.3 x (4 + (528 + 480 + 6.6 K) / 48) <= 45 ms;
    # 6000-token prefills then keep the prefill lane busy for a second
    reqs = [Request(i, 0.01 * i, 100, 300) for i in range(24)]
    reqs += [Request(100 + i, 0.3 + 0.1 * i, 6000, 2) for i in range(10)]
    s = gang(kv_blocks=2000, **options)
    steps = [(round(d.now, 3), d.lane(DECODE).num_sms, fewest_meeting_tbt(s, d.lane(DECODE), d.job_tokens))
             for d in drive(s, reqs) if d.pending and d.lane(DECODE)]
    # one squeezed step is the price of query-based sync (the running prefill group holds the SMs); the next
    # step must get what TBT needs
    short_twice = [(a, b) for a, b in zip(steps, steps[1:]) if a[2] and b[2] and a[1] < a[2] and b[1] < b[2]]
    # a request's first gap also waits for the decode step running when its prefill ended (query-based
    # merge), so it may span up to two steps: only later gaps are bounded by one step
    worst_gap_ms = max(g for r in s.records for g in r.tbt_gaps_s()[1:]) * 1000
    assert not short_twice and worst_gap_ms <= 50, (
        f"{len(short_twice)} consecutive decode steps got fewer SMs than TBT needs (time, got, needed) "
        f"{short_twice[:2]}; worst TBT gap {worst_gap_ms:.1f} ms with no contention at all")


def test_unmeetable_tbt_is_counted_not_silently_violated():
    s = gang(slo=SLO(ttft_ms=1000, tbt_ms=5))  # even 112 SMs take 4 + 548/112 = 8.9 ms
    decisions = drive(s, mixed_workload())
    sms = [d.lane(DECODE).num_sms for d in decisions if d.lane(DECODE) and d.pending]
    assert s.counters["tbt_unmeetable"] >= len(sms) > 0
    assert set(sms) <= {SPLIT_DECODE_SMS[-1], MENU.largest_decode_within(NUM_SMS - 20)}  # the best it can do


def test_static_partition_keeps_one_split():
    s = gang(adaptive_partition=False, piggyback=False)
    decisions = drive(s, mixed_workload())
    assert {d.lane(DECODE).num_sms for d in decisions if d.lane(DECODE) and d.pending} == {s._static_decode_sms}


# ---- layer-wise prefill and query-based merge -------------------------------------------------------------
def test_prefill_layers_cover_one_decode_step():
    s = gang(kv_blocks=2000)
    reqs = [Request(0, 0.0, 50, 200)] + [Request(i, 0.05 * i, 6000 + 1000 * i, 5) for i in range(1, 6)]
    n_pls = []
    for d in drive(s, reqs):
        p = d.lane(PREFILL)
        dec = d.lane(DECODE) or d.busy.get(DECODE)
        if p is None:
            continue
        if dec is None:  # nothing to overlap: the whole GPU and every remaining layer at once
            assert p.num_sms == NUM_SMS and p.layer_end == NUM_LAYERS
            continue
        # whole 8-SM groups of what decode leaves (fewer if decode asked for more than it got)
        assert p.num_sms % 8 == 0 and 0 < p.num_sms <= (NUM_SMS - dec.num_sms) // 8 * 8
        new, reused = [c.num_new for c in p.prefill], [c.start_len for c in p.prefill]
        t_p = s.est.prefill_guarded_s(new, reused, p.num_sms, len(dec.decode_ids), dec.decode_kv_len)
        t_d = s.est.decode_s(len(dec.decode_ids), dec.decode_kv_len, dec.num_sms)
        n_pl = max(1, math.ceil(t_d * NUM_LAYERS / t_p))
        assert p.layer_end - p.layer_start == min(n_pl, NUM_LAYERS - p.layer_start)
        n_pls.append(n_pl)
    assert n_pls and min(n_pls) < NUM_LAYERS  # long prefills were really split into layer groups


def test_finished_prefill_joins_decode_at_the_next_step_boundary():
    decisions = drive(gang(), [Request(0, 0.0, 50, 100), Request(1, 0.05, 3000, 20)])
    done_at = None
    for d in decisions:
        p = d.busy.get(PREFILL)
        if done_at is None and d.lane(DECODE) and 1 in d.lane(DECODE).decode_ids:
            # request 1 joins the first decode launched after its prefill ended, never earlier
            assert all(1 not in l.decode_ids for l in launches(decisions[: decisions.index(d)], DECODE))
            done_at = d.now
        if p is not None and p.prefill_completes and p.prefill[0].request_id == 1:
            assert done_at is None
    assert done_at is not None


def test_no_layerwise_launches_whole_prefills():
    s = gang(layerwise=False, kv_blocks=2000)
    decisions = drive(s, [Request(0, 0.0, 50, 200)] + [Request(i, 0.05 * i, 6000, 5) for i in range(1, 4)])
    assert all(l.layer_start == 0 and l.layer_end == NUM_LAYERS for l in launches(decisions, PREFILL))


def test_no_query_merge_starts_lanes_together():
    decisions = drive(gang(query_merge=False), mixed_workload())
    assert all(not d.launches for d in decisions if d.busy)


# ---- short-preempts-long ----------------------------------------------------------------------------------
def long_and_short(short_at: float, long_len: int = 16000):
    """A decoding request keeps the decode lane busy, so a long prefill runs layer group by layer group
    beside it; a short request arrives mid-way."""
    return [Request(0, 0.0, 64, 120), Request(1, 0.02, long_len, 4), Request(2, short_at, 300, 4)]


def run_ttfts(preemption: bool, slo: SLO, requests, **options):
    s = gang(slo=slo, preemption=preemption, **options)
    drive(s, requests)
    return {r.request_id: r.ttft_s for r in s.records}, s.counters["prefill_preemptions"]


def test_short_prefill_preempts_a_long_one_and_both_meet_ttft():
    # targets: max(200 ms, 0.2 ms per token): long 16000 tokens -> 3.2 s; short 300 tokens -> 200 ms
    slo = SLO(ttft_ms=200, tbt_ms=50, ttft_ms_per_token=0.2)
    reqs = long_and_short(0.3)
    base, n0 = run_ttfts(False, slo, reqs)
    pre, n1 = run_ttfts(True, slo, reqs)
    assert n0 == 0 and n1 == 1
    assert base[2] > 0.2 >= pre[2]  # the short one misses by waiting and meets by jumping
    assert pre[1] <= 3.2


@pytest.mark.parametrize("options", [PAPER, {}], ids=["paper", "default"])
def test_a_short_prompt_behind_a_long_multi_job_prompt_goes_first_at_the_next_job_without_preemption(options):
    # the long prompt is admitted and prefilled in 2048-token jobs (~115 ms each); its remaining tokens fill
    # every next job, yet the short one (earlier deadline) is admitted at the next job boundary and runs
    # in a job of its own, not batched with a chunk of the long one that would delay its first token
    slo = SLO(ttft_ms=200, tbt_ms=50, ttft_ms_per_token=0.2)  # long: 8 s, short: 200 ms
    reqs = long_and_short(0.3, long_len=40000)
    s = gang(slo=slo, kv_blocks=4000, preemption=False, prefill_tokens=2048, **options)
    decisions = drive(s, reqs)
    ttft = {r.request_id: r.ttft_s for r in s.records}
    assert ttft[2] <= 0.2 < 2.0 < ttft[1] <= 8.0
    with_short = [l for l in launches(decisions, PREFILL) + launches(decisions, DECODE)
                  if any(c.request_id == 2 for c in l.prefill)]
    assert with_short and all(c.request_id == 2 for l in with_short for c in l.prefill)


MULTI_JOB_XFAIL = pytest.mark.xfail(strict=True, reason=(
    "TTFT-aware split, long prompt split over several prefill jobs (prefill_tokens < prompt): _maybe_preempt "
    "counts only the running job's remaining layers (not the request's later chunks) on the current prefill "
    "partition, which the TTFT-aware split then resizes; the long request misses a target it met without "
    "preemption (1.93 s > 1.81 s)"))


@pytest.mark.parametrize("options,long_len,prefill_tokens,short_at,slack_ms", [
    pytest.param(PAPER, 16000, 32768, 0.05, 5, id="paper-1job-early"),
    pytest.param(PAPER, 16000, 32768, 0.3, 1, id="paper-1job-mid"),
    pytest.param(PAPER, 16000, 32768, 0.6, 10, id="paper-1job-late"),
    pytest.param(PAPER, 6000, 32768, 0.15, 5, id="paper-short-long"),
    pytest.param(PAPER, 16000, 8192, 0.3, 10, id="paper-2jobs-mid"),
    pytest.param(PAPER, 16000, 8192, 0.6, 5, id="paper-2jobs-late"),
    pytest.param({}, 16000, 32768, 0.15, 5, id="default-1job-early"),
    pytest.param({}, 16000, 32768, 0.6, 1, id="default-1job-late"),
    pytest.param({}, 6000, 32768, 0.15, 5, id="default-short-long"),
    pytest.param({}, 16000, 8192, 0.3, 10, id="default-2jobs-mid"),
    pytest.param({"ttft_aware_split": True}, 16000, 8192, 0.3, 10, id="ttft-aware-2jobs-mid", marks=MULTI_JOB_XFAIL),
])
def test_preemption_never_makes_the_long_prefill_miss_a_ttft_it_would_meet(options, long_len, prefill_tokens,
                                                                           short_at, slack_ms):
    # regression: the check used the SMs decode leaves (e.g. 116) rather than the whole 8-SM groups the
    # prefill really gets (112), so it was optimistic and the long prefill missed by ~10 ms
    reqs = long_and_short(short_at, long_len)
    opts = dict(options, prefill_tokens=prefill_tokens)
    base, _ = run_ttfts(False, SLO(ttft_ms=200, tbt_ms=50, ttft_ms_per_token=0.2), reqs, **opts)
    # the long request's target: just above what it achieves without preemption
    slo = SLO(ttft_ms=200, tbt_ms=50, ttft_ms_per_token=(base[1] + slack_ms / 1000) * 1000 / long_len)
    base, _ = run_ttfts(False, slo, reqs, **opts)
    pre, n = run_ttfts(True, slo, reqs, **opts)
    target = slo.ttft_target_s(long_len)
    assert base[1] <= target
    assert pre[1] <= target + 1e-9, f"preemption ({n}) made the long prefill miss: {pre[1]:.4f} > {target:.4f}"


@settings(max_examples=40, deadline=None)
@given(prompts=st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 60), st.sampled_from([0.0, 0.002, 0.02, 0.2])),
                        min_size=1, max_size=10),
       options=st.sampled_from([{}, {"layerwise": False}, {"query_merge": False}, {"preemption": False},
                                {"adaptive_partition": False}, PAPER, {"piggyback": False}, {"prefill_tokens": 256}]),
       kv_blocks=st.sampled_from([40, 200, 1100]), ttft_ms=st.sampled_from([20, 300, 3000]))
def test_random_workloads_keep_invariants(prompts, options, kv_blocks, ttft_ms):
    at, reqs = 0.0, []
    for i, (prompt_len, output_len, gap) in enumerate(prompts):
        at += gap
        reqs.append(Request(i, at, prompt_len, output_len))
    s = gang(slo=SLO(ttft_ms=ttft_ms, tbt_ms=50, ttft_ms_per_token=0.05), kv_blocks=kv_blocks, **options)
    drive(s, reqs)  # checks invariants at every step, SM budgets, and that every request is served


# ---- through the simulator -----------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_runs_in_the_simulator(ablation):
    reqs = [Request(i, 0.02 * i, 300 + 700 * (i % 4), 20 + 5 * (i % 3)) for i in range(30)]
    res = simulate(reqs, SimConfig(policy="yoda", policy_options=ABLATIONS[ablation], kv_blocks=400,
                                   block_size=16, check_every=1))
    assert res.metrics["completed"] == 30
    assert all(len(r.token_at) == r.output_len for r in res.records)


# ---- shared prefixes ---------------------------------------------------------------------------------------
def shared_prefix_pair(gap_s=0.0):
    """Two prompts arriving together that share 8 uncached 512-token blocks (a document, an earlier turn)."""
    doc = tuple(range(1, 9))
    return [Request(0, 0.0, 4096, 4, block_hashes=doc), Request(1, gap_s, 4096 + 512, 4, block_hashes=doc + (99,))]


def test_a_request_with_slack_waits_for_a_shared_prefix_admitted_in_the_same_round():
    s = gang(slo=SLO(ttft_ms=5000, tbt_ms=50))
    drive(s, shared_prefix_pair())
    first, second = s.records
    assert second.reused_len == 4096, "the second prompt should reuse the first one's document"
    assert s.counters["prefix_deferrals"] > 0
    assert second.ttft_s <= 5.0 and first.ttft_s <= 5.0


def test_a_request_without_slack_computes_the_shared_prefix_itself():
    # waiting for the first prompt's job would take it past its TTFT target: it is admitted at once
    s = gang(slo=SLO(ttft_ms=600, tbt_ms=50))
    drive(s, shared_prefix_pair())
    first, second = s.records
    assert second.reused_len == 0
    assert second.ttft_s <= 0.6 and first.ttft_s <= 0.6


def test_a_request_held_back_by_the_batch_cap_gets_in_where_a_decode_run_frees_room():
    """A decode run alone on the GPU ends at the step where a request finishes while another waits for room
    in the batch (not pending prefill: the cap holds it back), so the waiting one is admitted there and not
    when the whole run (up to 64 simulated steps) ends."""
    requests = [Request(0, 0.0, 100, 200), Request(1, 0.0, 100, 11), Request(2, 0.001, 100, 5)]
    res = simulate(requests, SimConfig(policy="yoda", max_batch=2, kv_blocks=1100, block_size=16))
    long_, short, held = res.records
    assert held.token_at[0] > short.finished_at  # it did wait for the room
    step_s = short.token_at[-1] - short.token_at[-2]
    assert held.token_at[0] - short.finished_at < 5 * step_s + 0.02  # its prefill and a step or two, not a run
    assert long_.token_at[-1] > held.token_at[0] + 50 * step_s  # the long request's run went on after
