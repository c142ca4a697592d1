"""Timed simulations in fresh processes for benchmarks/sim_speed.py: ours against a baseline checkout of
another git ref (side by side, same requests, records compared), and the scaling table (wall time and
peak RSS per run). Each run is benchmarks/sim_child.py in its own interpreter, so both sides start alike
(no caches warmed by an earlier run) and a run's peak RSS is its own.
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from yoda.request import Request

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "benchmarks" / "sim_child.py"


class ChildError(RuntimeError):
    """A timed simulation in a child process failed."""


@contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """A detached `git worktree` of `ref` in a temporary folder, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="yoda-baseline-"))
    tree = tmp / "tree"
    made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), ref],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise ChildError(f"cannot check out baseline ref {ref!r}: {made.stderr.strip()}")
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)


def run_child(root: Path, job: dict, timeout_s: float | None = None) -> dict:
    """Run `job` (see sim_child.py) with `root`'s packages first on the import path."""
    with tempfile.TemporaryDirectory(prefix="yoda-child-") as tmp:
        job_path, out_path = Path(tmp) / "job.pkl", Path(tmp) / "out.pkl"
        job_path.write_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}
        done = subprocess.run([sys.executable, str(CHILD), str(job_path), str(out_path)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise ChildError(f"simulation in {root} failed: {done.stderr.strip()[-1500:]}")
        return pickle.loads(out_path.read_bytes())


def records_differ(ours: Sequence[tuple], base: Sequence[tuple], tol_s: float = 1e-9) -> int:
    """Records (sim_child._record_rows) that differ in anything but float noise below `tol_s`."""
    if len(ours) != len(base):
        return max(len(ours), len(base))
    differ = 0
    for a, b in zip(ours, base):
        same = a[:4] == b[:4] and len(a[4]) == len(b[4]) and all(
            math.isclose(x, y, rel_tol=0, abs_tol=tol_s) for x, y in zip(a[4], b[4]))
        differ += not same
    return differ


def time_side_by_side(requests: list[Request], config: dict, workers: int, baseline: Path,
                      repeat: int = 1) -> tuple[dict, dict, int]:
    """(our run, the baseline's run, records that differ): each the fastest of `repeat`, alternating."""
    job = {"requests": requests, "config": config, "workers": workers, "records": True}
    ours: list[dict] = []
    base: list[dict] = []
    for _ in range(repeat):
        ours.append(run_child(ROOT, job))
        base.append(run_child(baseline, job))
    differ = records_differ(ours[0]["records"], base[0]["records"])
    best = [min(runs, key=lambda r: r["wall_s"]) for runs in (ours, base)]
    for row in best:
        row.pop("records", None)
    return best[0], best[1], differ


def time_scale(num_requests: int, rate_rps: float, config: dict, timeout_s: float | None = None) -> dict:
    """One Azure-derived run of `num_requests` in a fresh process: wall s of the event loop, peak RSS."""
    job = {"azure": (num_requests, rate_rps, 0), "config": {**config, "compact_records": True}}
    return run_child(ROOT, job, timeout_s)


def commit_of(tree: Path) -> str:
    """The commit a checkout is at (short hash)."""
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
