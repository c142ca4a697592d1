"""Measured per-operator kernel times (Vidur's tables, calibration/profiles/vidur/) and how to read a GEMM of
any shape off them.

A table holds, per tensor-parallel degree and num_tokens, the median milliseconds of each operator of one
layer of one model. Its four GEMMs at four TP degrees are 16 measured (K, N) weight shapes; `GemmLibrary`
pools them (from every table of a GPU) and prices a GEMM of shape (M tokens, K, N) by:
1. the measured shape itself when present;
2. else the shapes sharing K (or N): linear interpolation in the other dimension between the two measured
   neighbours, or linear extrapolation from the two nearest (never below the proportional scaling of the
   nearest when shrinking, nor below the nearest when growing);
3. else the nearest shape (log distance) scaled by its FLOP ratio.
In num_tokens every series is interpolated linearly between measured points (8-32 tokens apart), so the
tile and wave steps the kernels show are kept; beyond the last point times grow in proportion to M.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_DIR = Path(__file__).resolve().parents[1] / "calibration" / "profiles" / "vidur"
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
# table files per GPU family: the GPU whose kernels were measured
TABLES: dict[str, tuple[str, ...]] = {
    "h100": ("h100_llama-2-7b", "h100_llama-2-70b"),
    "a100": ("a100_llama-3-8b", "a100_llama-3-70b", "a100_llama-2-7b"),
}
ALL_REDUCE_FILE = "h100_dgx_all_reduce.csv"


@dataclass(frozen=True)
class Shape:
    """The transformer dimensions a table was measured on (or a model's, for the same arithmetic)."""

    num_heads: int
    num_kv_heads: int
    hidden: int
    intermediate: int

    def gemms(self, tp: int) -> dict[str, tuple[int, int]]:
        """(K, N) of each GEMM's weight on one GPU at tensor-parallel degree `tp`."""
        head_dim = self.hidden // self.num_heads
        q, kv = self.num_heads * head_dim // tp, math.ceil(self.num_kv_heads / tp) * head_dim
        return {"attn_pre_proj": (self.hidden, q + 2 * kv), "attn_post_proj": (q, self.hidden),
                "mlp_up_proj": (self.hidden, 2 * self.intermediate // tp),
                "mlp_down_proj": (self.intermediate // tp, self.hidden)}


@lru_cache(maxsize=16)
def read_table(name: str, directory: str = str(TABLE_DIR)) -> pd.DataFrame:
    path = Path(directory) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"measured table {path} missing (ships in calibration/profiles/vidur/)")
    return pd.read_csv(path)


class OperatorTable:
    """One measured table: per TP degree, num_tokens and each operator's median (ms) and spread."""

    def __init__(self, name: str) -> None:
        frame = read_table(name)
        self.name = name
        row = frame.iloc[0]
        self.shape = Shape(int(row.n_head), int(row.n_kv_head), int(row.n_embd), int(row.n_expanded_embd))
        self.by_tp = {int(tp): g.sort_values("num_tokens") for tp, g in frame.groupby("tp")}

    def tokens(self, tp: int) -> np.ndarray:
        return self.by_tp[tp]["num_tokens"].to_numpy(float)

    def op_ms(self, op: str, tp: int) -> np.ndarray:
        return self.by_tp[tp][f"{op}_ms"].to_numpy(float)

    def relative_spread(self, tp: int = 1) -> float:
        """Median over points of (std / median) of one layer's summed GEMM times: the run-to-run noise."""
        g = self.by_tp[tp]
        total = sum(g[f"{op}_ms"] for op in GEMM_OPS)
        std = np.sqrt(sum(g[f"{op}_std_ms"] ** 2 for op in GEMM_OPS))
        return float(np.median(std / total))


def tables_for(gpu_family: str) -> list[OperatorTable]:
    return [OperatorTable(n) for n in TABLES[gpu_family]]


def interp_tokens(tokens: np.ndarray, values: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Linear in num_tokens between measured points; proportional to M beyond the last, flat below the first."""
    out = np.interp(m, tokens, values)
    beyond = m > tokens[-1]
    out[beyond] = values[-1] * m[beyond] / tokens[-1]
    return out


class GemmLibrary:
    """Measured GEMM time series keyed by weight shape (K, N), pooled from tables (see module docstring)."""

    def __init__(self, tables: list[OperatorTable]) -> None:
        self.series: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for table in tables:
            for tp in table.by_tp:
                for op, kn in table.shape.gemms(tp).items():
                    self.series.setdefault(kn, []).append((table.tokens(tp), table.op_ms(op, tp)))

    def _at(self, kn: tuple[int, int], m: np.ndarray) -> np.ndarray:
        return np.mean([interp_tokens(t, v, m) for t, v in self.series[kn]], axis=0)

    def gemm_ms(self, m: np.ndarray, k: int, n: int) -> np.ndarray:
        """Milliseconds of an (M x K) @ (K x N) bf16 GEMM for every M in `m`."""
        if (k, n) in self.series:
            return self._at((k, n), m)
        for fixed, var, axis in ((k, n, 1), (n, k, 0)):
            same = sorted((kn[axis], kn) for kn in self.series if kn[1 - axis] == fixed)
            if not same:
                continue
            lower = [s for s in same if s[0] <= var]
            upper = [s for s in same if s[0] >= var]
            if lower and upper:
                (a, ka), (b, kb) = lower[-1], upper[0]
                w = (var - a) / (b - a)
                return (1 - w) * self._at(ka, m) + w * self._at(kb, m)
            nearest = lower[-1] if lower else upper[0]
            t_near = self._at(nearest[1], m)
            if len(same) == 1:
                return t_near * var / nearest[0]
            (a, ka), (b, kb) = same[-2:] if lower else same[:2]
            ta, tb = self._at(ka, m), self._at(kb, m)
            line = ta + (tb - ta) * (var - a) / (b - a)
            bound = t_near * var / nearest[0] if var < nearest[0] else t_near
            return np.maximum(line, bound)
        best = min(self.series, key=lambda kn: abs(math.log(kn[0] / k)) + abs(math.log(kn[1] / n)))
        return self._at(best, m) * (k * n) / (best[0] * best[1])


class AllReduceTable:
    """NCCL all-reduce time (s) by payload bytes, per worker count: medians smoothed over neighbouring sizes
    (a rolling median of 9: single sizes jump by 2x between runs), linear between sizes, by bandwidth beyond."""

    def __init__(self) -> None:
        frame = read_table(ALL_REDUCE_FILE.removesuffix(".csv"))
        self.curves: dict[int, tuple[list[float], list[float]]] = {}
        for workers, g in frame.groupby("num_workers"):
            g = g.sort_values("size")
            smooth = g["all_reduce_ms"].rolling(9, center=True, min_periods=1).median().cummax()
            self.curves[int(workers)] = (g["size"].astype(float).tolist(), (smooth / 1e3).tolist())

    def time_s(self, num_workers: int, num_bytes: float) -> float:
        if num_workers <= 1:
            return 0.0
        if num_workers not in self.curves:
            raise ValueError(f"no measured all-reduce for {num_workers} GPUs; measured: {sorted(self.curves)}")
        sizes, times = self.curves[num_workers]
        if num_bytes >= sizes[-1]:
            slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
            return times[-1] + slope * (num_bytes - sizes[-1])
        i = bisect_right(sizes, num_bytes)
        if i == 0:
            return times[0]
        w = (num_bytes - sizes[i - 1]) / (sizes[i] - sizes[i - 1])
        return times[i - 1] + w * (times[i] - times[i - 1])
