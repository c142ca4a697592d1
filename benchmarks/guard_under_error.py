"""How often Yoda's guard keeps P99 TBT within target when the policy's estimator is optimistic.

    python -m benchmarks.guard_under_error [--optimism 0.2] [--out results]

Grid: TBT targets x request rates x seeds on synthetic ShareGPT sessions (Llama-3-8B, H100, measured
latency source), each run with the guard and with the no_guard ablation, the estimator fitted on noisy
samples biased `optimism` low. Prints the share of cells within target; writes guard_under_error.json,
.md and .png into --out.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from sim.run import SimConfig, simulate
from sim.workloads import load_workload
from yoda.gang_scheduler import ABLATIONS
from yoda.request import SLO

TBT_MS = (10, 12, 14, 16, 20, 25)
RATES = (2, 4, 6)  # offered req/s: a session trace's rate now scales its whole load
SEEDS = (0, 1)


def run_cell(tbt_ms: float, rate: float, seed: int, optimism: float, guard: bool) -> float:
    requests, _ = load_workload("synthetic:sharegpt:300", rate=rate, replay="poisson", seed=seed)
    cfg = SimConfig(policy="yoda", slo=SLO(ttft_ms=1000, tbt_ms=tbt_ms), estimator_optimism=optimism,
                    policy_options={} if guard else dict(ABLATIONS["no_guard"]))
    return simulate(requests, cfg).metrics["p99_tbt_ms"]


def plot(rows: list[dict], optimism: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, guard in enumerate((True, False)):
        share = [sum(r["within"] for r in rows if r["tbt_ms"] == t and r["guard"] == guard) /
                 sum(1 for r in rows if r["tbt_ms"] == t and r["guard"] == guard) for t in TBT_MS]
        ax.bar([x + 0.4 * i for x in range(len(TBT_MS))], [100 * s for s in share], width=0.4,
               label="guard" if guard else "no guard", color=f"C{i}")
    ax.set_xticks([x + 0.2 for x in range(len(TBT_MS))], [str(t) for t in TBT_MS])
    ax.set_xlabel("TBT target (ms)")
    ax.set_ylabel("cells with P99 TBT <= target (%)")
    ax.set_title(f"estimator {100 * optimism:.0f}% optimistic ({len(RATES)} rates x {len(SEEDS)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimism", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    started, rows = time.perf_counter(), []
    for tbt, rate, seed, guard in itertools.product(TBT_MS, RATES, SEEDS, (True, False)):
        p99 = run_cell(tbt, rate, seed, args.optimism, guard)
        rows.append({"tbt_ms": tbt, "rate": rate, "seed": seed, "guard": guard, "p99_tbt_ms": p99,
                     "within": p99 <= tbt})
    lines = [f"# Guard under estimation error ({100 * args.optimism:.0f}% optimistic estimator)", "",
             f"`python -m benchmarks.guard_under_error --optimism {args.optimism}`: synthetic:sharegpt:300, "
             f"rates {RATES} req/s, seeds {SEEDS}, Llama-3-8B on H100, measured latency source.", "",
             "| TBT target (ms) | within target, guard | within target, no guard |", "|---|---|---|"]
    for t in TBT_MS:
        cells = {g: [r for r in rows if r["tbt_ms"] == t and r["guard"] == g] for g in (True, False)}
        lines.append(f"| {t} | " + " | ".join(f"{sum(r['within'] for r in c)}/{len(c)}" for c in cells.values()) + " |")
    total = {g: sum(r["within"] for r in rows if r["guard"] == g) / sum(1 for r in rows if r["guard"] == g)
             for g in (True, False)}
    lines += ["", f"All cells: guard {100 * total[True]:.0f}%, no guard {100 * total[False]:.0f}%.", ""]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guard_under_error.md").write_text("\n".join(lines))
    (args.out / "guard_under_error.json").write_text(json.dumps(
        {"optimism": args.optimism, "rows": rows, "share_within": {"guard": total[True], "no_guard": total[False]},
         "wall_s": time.perf_counter() - started}, indent=1) + "\n")
    plot(rows, args.optimism, args.out / "guard_under_error.png")


if __name__ == "__main__":
    main()
