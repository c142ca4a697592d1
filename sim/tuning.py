"""Goodput of a policy tuned over its declared knob grid, on several seeds, with a 95% interval.

    from sim.tuning import TraceWorkload, TuneCell, run_tuning
    cell = TuneCell(TraceWorkload("traces/data/mooncake_sample.jsonl"), SimConfig(policy="chunked"), (1, 2, 3),
                    grid_for("chunked", num_instances=1))
    ((result,),) = run_tuning([cell], workers=2)    # result["goodput_rps"], ["ci95"], ["config"], ...

Three phases, each fanned out over processes across all cells: (1) every grid point's goodput on the first
seed with a coarse search (`COARSE_TOL`, optionally on shorter probes); (2) the best `top` points on the
first seed with a fine search (`FINE_TOL`) started at the coarse result; (3) those points on every other
seed, started at (2)'s result (further variants of a cell, e.g. the other admission layer, confirm the best
point only; a cell may start from another cell's result, e.g. an ablation from the tuned policy). The chosen
point has the highest mean over the seeds; its per-seed goodputs give the mean and a Student-t 95% interval
(scipy). A seed changes every random step of a probe's workload (arrival times, bucket spreading, sampled lengths).
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

COARSE_TOL, FINE_TOL = 0.2, 0.05
# bracket steps of a search started at another search's result: the same point on another seed (seeds move
# goodput by tens of percent), or another admission layer or cell (which may move it by a factor)
WARM_GROWTH, CROSS_GROWTH = 1.1, 1.25
CONFIG_KEYS = ("num_prefill_instances",)  # grid keys that are SimConfig fields; the rest are policy options


def _chunked_grid() -> list[dict]:
    """Token budget x (no cap | a cap of a quarter of the budget for up to 4 partial prefills, long or not,
    or with 1 long one | a cap of half the budget for 2) (vLLM / SGLang knobs, yoda/baselines.py ChunkLimits)."""
    out = []
    for budget in (512, 1024, 2048):
        out.append({"token_budget": budget})
        for cap, partial, long in ((budget // 4, 4, 4), (budget // 4, 4, 1), (budget // 2, 2, 2)):
            out.append({"token_budget": budget, "long_prefill_token_threshold": cap,
                        "max_num_partial_prefills": partial, "max_long_partial_prefills": long})
    return out


def _disagg_grid(num_instances: int) -> list[dict]:
    """xP:yD splits (every one at 2 and 4 GPUs; quarters at 8 and more) x the prefill side as shipped
    (whole-prompt batches) or chunked with a cap (2048-token budget, 512-token cap, 4 partial prefills)."""
    splits = range(1, num_instances) if num_instances <= 4 else sorted(
        {max(1, num_instances * k // 4) for k in (1, 2, 3)})
    prefill_sides = ({}, {"token_budget": 2048, "long_prefill_token_threshold": 512,
                          "max_num_partial_prefills": 4, "max_long_partial_prefills": 4})
    return [{"num_prefill_instances": p, **side} for p in splits for side in prefill_sides]


def grid_for(policy: str, num_instances: int = 1, num_sms: int = 132) -> list[dict]:
    """The declared tuning grid of `policy` (a list of option dicts; [{}] = the defaults only).
    Yoda is tuned over the size of its prefill jobs, its one throughput knob."""
    step = 16
    decode_shares = [s for s in range(step, num_sms, step) if 0.25 <= s / num_sms <= 0.75]
    grids: dict[str, Callable[[], list[dict]]] = {
        "chunked": _chunked_grid,
        "prefill_first": lambda: [{"max_prefill_tokens": t} for t in (2048, 8192, 16384)],
        "static_split": lambda: [{"decode_sms": d, "chunk_tokens": c}
                                 for d in decode_shares[::2] for c in (512, 2048)],
        "temporal": lambda: [{"layers_per_group": n} for n in (2, 4, 8)],
        "disagg": lambda: _disagg_grid(num_instances),
        "yoda": lambda: [{"prefill_tokens": t} for t in (4096, 8192, 16384)],
    }
    if policy not in grids:
        raise ValueError(f"no tuning grid for policy {policy!r}; choose from {', '.join(grids)}")
    return grids[policy]()


def policy_knobs(policy: str) -> dict:
    """The knobs `policy` exposes, at their defaults (so a reported config always names them all, e.g.
    chunked prefill's chunk cap, 0 when off)."""
    import inspect

    from yoda.disaggregation import DisaggPrefill
    from yoda.gang_scheduler import YodaOptions
    from yoda.policies import POLICIES

    if policy == "yoda":
        return {"admission": "deadline", "prefill_tokens": YodaOptions().prefill_tokens}
    factories = [POLICIES["chunked"], DisaggPrefill] if policy == "disagg" else [POLICIES[policy]]
    knobs: dict = {}
    for factory in factories:
        for name, p in inspect.signature(factory).parameters.items():
            if p.default is not inspect.Parameter.empty and name not in ("config", "slo"):
                knobs[name] = p.default
    return knobs


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval of the mean (the mean twice for one value or no spread)."""
    from scipy import stats

    mean = float(sum(values) / len(values))
    sem = float(stats.sem(values)) if len(values) > 1 else 0.0
    if sem == 0 or not math.isfinite(sem):
        return mean, mean, mean
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


class Workload(Protocol):
    """What a probe replays: picklable, so tasks can run in other processes."""

    def runner(self, cfg, seed: int, criterion: str = "strict") -> tuple[Callable[[float], object], float]:
        """(rate -> the records of one simulation at that rate, or yoda.goodput.GaveUp once it cannot meet
        `criterion`; a first rate to try)."""
        ...


@dataclass(frozen=True)
class TraceWorkload:
    """A trace file or synthetic:NAME, re-timed to each probe's rate (sim.workloads)."""

    trace: str
    format: str | None = None
    max_requests: int | None = None
    skip_bad: bool = False
    replay: str = "original"
    cv: float = 1.0

    def runner(self, cfg, seed: int, criterion: str = "strict"):
        from sim.run import simulate_probe
        from sim.workloads import WorkloadError, load_base, retime

        requests, desc = load_base(self.trace, self.format, seed, self.max_requests, self.skip_bad)
        start = desc.get("original_rate_rps")
        if not start:
            raise WorkloadError("the trace has no rate of its own (all arrivals at once): give --start-rps")

        def run(rate: float):
            retimed = retime(requests, desc, rate=rate, replay=self.replay, cv=self.cv, seed=seed)[0]
            return simulate_probe(retimed, cfg, criterion)
        return run, start


@dataclass
class TuneCell:
    """One policy on one workload. The grid is searched once (with the first variant's options); each
    variant (e.g. {"admission": "fcfs"}, {"admission": "deadline"}) then confirms the shortlist on every seed
    and gets its own result, so variants share the tuning cost but not the chosen knobs."""

    workload: Workload
    config: object  # SimConfig: the policy and its fixed options; grid points are laid over them
    seeds: tuple[int, ...]
    grid: list[dict] = field(default_factory=lambda: [{}])
    criterion: str = "strict"  # the headline: pooled and per-request TBT both (yoda.goodput.CRITERIA)
    start_rps: float | None = None
    max_probes: int = 16
    top: int = 2  # grid points confirmed on every seed with the first variant; the others confirm the best one
    variants: tuple[dict, ...] = ({},)
    coarse_workload: Workload | None = None  # the grid search's probes (default: `workload`), e.g. shorter
    warm_from: int | None = None  # index of a cell (in run_tuning's list) whose lead result starts this one's
    # searches (e.g. an ablation from the tuned policy); None: its own coarse or lead results


def apply_point(cfg, point: dict):
    """`cfg` with a grid point's options laid over its policy options (and SimConfig keys set)."""
    fields = {k: v for k, v in point.items() if k in CONFIG_KEYS}
    options = {**cfg.policy_options, **{k: v for k, v in point.items() if k not in CONFIG_KEYS}}
    return replace(cfg, policy_options=options, **fields)


def _search(task: tuple) -> dict:
    """One goodput search (runs in a worker process)."""
    import time

    from yoda.goodput import search_goodput

    started, cpu = time.perf_counter(), time.process_time()
    workload, cfg, seed, start_rps, rel_tol, max_probes, growth, criterion = task
    run, start = workload.runner(cfg, seed, criterion)
    found = search_goodput(run, cfg.slo, start_rps or start, criterion=criterion, rel_tol=rel_tol,
                           max_probes=max_probes, growth=growth)
    ok = [p for p in found.probes if p["ok"]] or found.probes
    return {"goodput_rps": found.goodput_rps, "num_probes": len(found.probes),
            "probe_requests": min(p["completed"] + p["rejected"] for p in ok), "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu}


def map_searches(tasks: list[tuple], workers: int, on_done: Callable[[], None] | None = None) -> list[dict]:
    """`_search` over tasks, in this process or `workers` spawned ones; results in task order."""
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            out.append(_search(t))
            if on_done:
                on_done()
        return out
    # NOTE: spawn, not fork: the caller may run threads (rich progress) that a forked child would inherit
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_search, t) for t in tasks]
        for f in as_completed(futures):
            f.result()
            if on_done:
                on_done()
        return [f.result() for f in futures]


def num_searches(cells: Sequence[TuneCell]) -> int:
    """Searches `run_tuning` will run (for a progress bar)."""
    return sum((len(c.grid) if len(c.grid) > 1 else 0)
               + (min(c.top, len(c.grid)) + len(c.variants) - 1) * len(c.seeds) for c in cells)


def _task(cell: TuneCell, options: dict, seed: int, guess: float, growth: float, tol: float = FINE_TOL) -> tuple:
    """A search task: the cell's config with `options` laid over it, started at `guess` (the cell's own
    start rate, doubling, when there is no guess)."""
    start, growth = (guess, growth) if guess > 0 else (cell.start_rps, 2.0)
    return (cell.workload, apply_point(cell.config, options), seed, start, tol, cell.max_probes, growth,
            cell.criterion)


def run_tuning(cells: Sequence[TuneCell], workers: int = 1,
               on_done: Callable[[], None] | None = None) -> list[list[dict]]:
    """Tune every cell (each phase fanned out across all cells); per cell, one result dict per variant.

    Phases: (1) the grid, coarse, on the first seed; (2) the lead search of each shortlisted point (first
    variant, first seed), started at its coarse result; (3) every other seed and variant of those points,
    started at the lead result (other seeds step by `WARM_GROWTH`, the other admission layers by
    `CROSS_GROWTH`), and the cells warm-started from another cell's lead (`TuneCell.warm_from`). Each
    search still brackets and bisects to `FINE_TOL` on its own probes; a start only saves the probes that
    would have walked there."""
    for k, c in enumerate(cells):
        if c.warm_from is not None and not (0 <= c.warm_from < len(cells) and cells[c.warm_from].warm_from is None
                                            and c.warm_from != k):
            raise ValueError(f"cell {k}: warm_from must name another cell that is not warm-started itself")
    coarse_tasks = [_task(c, {**c.variants[0], **p}, c.seeds[0], 0.0, 2.0, COARSE_TOL)
                    for c in cells if len(c.grid) > 1 for p in c.grid]
    coarse = iter(map_searches(coarse_tasks, workers, on_done))
    shortlists = []  # per cell: [(grid index, coarse results or None)]
    for c in cells:
        if len(c.grid) == 1:
            shortlists.append([(0, None)])
            continue
        found = [next(coarse) for _ in c.grid]
        best = sorted(range(len(c.grid)), key=lambda i: (-found[i]["goodput_rps"], i))[: c.top]
        shortlists.append([(i, found) for i in best])
    # (2) lead searches
    lead_keys = [(k, i) for k, c in enumerate(cells) if c.warm_from is None for i, _ in shortlists[k]]
    lead_tasks = []
    for k, i in lead_keys:
        c, found = cells[k], dict(shortlists[k])[i]
        guess = found[i]["goodput_rps"] if found else 0.0
        lead_tasks.append(_task(c, {**c.grid[i], **c.variants[0]}, c.seeds[0], guess, 1.2))
    lead = dict(zip(lead_keys, map_searches(lead_tasks, workers, on_done)))

    def warm_guess(k: int, i: int) -> float:
        source = cells[k].warm_from
        if source is None:
            return lead[(k, i)]["goodput_rps"]
        return max(lead[(source, j)]["goodput_rps"] for j, _ in shortlists[source])
    # (3) the rest
    rest_keys, rest_tasks = [], []
    for k, (c, shortlist) in enumerate(zip(cells, shortlists)):
        for v, variant in enumerate(c.variants):
            for i, _ in shortlist[: None if v == 0 else 1]:
                for n, seed in enumerate(c.seeds):
                    if v == 0 and n == 0 and c.warm_from is None:
                        continue  # the lead search
                    rest_keys.append((k, v, i, n))
                    growth = WARM_GROWTH if v == 0 and c.warm_from is None else CROSS_GROWTH
                    rest_tasks.append(_task(c, {**c.grid[i], **variant}, seed, warm_guess(k, i), growth))
    rest = dict(zip(rest_keys, map_searches(rest_tasks, workers, on_done)))
    results = []
    for k, (c, shortlist) in enumerate(zip(cells, shortlists)):
        per_variant = []
        for v, variant in enumerate(c.variants):
            confirm = shortlist[: None if v == 0 else 1]
            rows = [[lead[(k, i)] if (v, n) == (0, 0) and c.warm_from is None else rest[(k, v, i, n)]
                     for n in range(len(c.seeds))] for i, _ in confirm]
            per_variant.append(_result(c, variant, confirm, rows))
        results.append(per_variant)
    return results


def _result(cell: TuneCell, variant: dict, shortlist: list, confirmed: list[list[dict]]) -> dict:
    means = [mean_ci95([r["goodput_rps"] for r in rows])[0] for rows in confirmed]
    pick = max(range(len(shortlist)), key=lambda k: (means[k], -k))
    index, found = shortlist[pick]
    per_seed = [r["goodput_rps"] for r in confirmed[pick]]
    mean, low, high = mean_ci95(per_seed)
    cfg = apply_point(cell.config, {**cell.grid[index], **variant})
    probe_requests = min(r["probe_requests"] for r in confirmed[pick])
    return {
        "goodput_rps": mean, "goodput_rps_per_seed": per_seed, "ci95": [low, high], "seeds": list(cell.seeds),
        "config": {"policy": cfg.policy, **policy_knobs(cfg.policy), **cfg.policy_options,
                   **({"num_prefill_instances": cfg.num_prefill_instances or max(1, cfg.num_instances // 2)}
                      if cfg.policy == "disagg" else {})},
        "criterion": cell.criterion, "probe_requests": probe_requests,
        "requests_beyond_p99": math.floor(probe_requests * (1 - cfg.slo.percentile / 100)),
        "num_probes": sum(r["num_probes"] for rows in confirmed for r in rows),
        # seconds of the searches behind this result (the grid's coarse ones are counted on the first variant)
        "search_wall_s": sum(r["wall_s"] for rows in confirmed for r in rows),
        "search_cpu_s": sum(r["cpu_s"] for rows in confirmed for r in rows)
        + (sum(r["cpu_s"] for r in found) if found and variant is cell.variants[0] else 0.0),
        "grid": [{"options": p, "coarse_goodput_rps": found[i]["goodput_rps"] if found else None}
                 for i, p in enumerate(cell.grid)],
        "confirmed": [{"options": cell.grid[i], "mean_goodput_rps": m} for (i, _), m in zip(shortlist, means)],
    }
