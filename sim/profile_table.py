"""Measured latency tables: the file format calibration writes and the latency source that reads it.

A profile directory holds `samples.csv` (or `samples.parquet`) and `metadata.json` (model, gpu, ...).
Each sample row: phase (prefill | decode | mixed), num_sms, new_len, reused_len, batch, kv_len, latency_s.
A prefill row is a batch of `batch` identical requests of new_len new tokens after reused_len cached
ones (kv_len unused); a decode row is one step of `batch` requests attending kv_len KV tokens in total;
a mixed row is one fused iteration of such a decode batch and one prefill chunk of new_len tokens. Mixed
rows train the policy's estimator (yoda.estimator); this latency source still prices a fused iteration
from its prefill and decode surfaces (ProfileTableLatency.mixed_s).
"""
from __future__ import annotations

import json
import math
from bisect import bisect_right
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import QhullError

from sim.latency import MIN_PREDICTION_S

COLUMNS = ("phase", "num_sms", "new_len", "reused_len", "batch", "kv_len", "latency_s")
PHASES = ("prefill", "decode", "mixed")


def write_profile_table(directory: str | Path, samples: pd.DataFrame, metadata: dict) -> Path:
    """Validate and write `samples` and `metadata` into `directory` (created). Returns the directory."""
    missing = [c for c in COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"samples lack columns {missing}; need {list(COLUMNS)}")
    bad = set(samples["phase"]) - set(PHASES)
    if bad:
        raise ValueError(f"unknown phases {sorted(bad)}; expected {PHASES}")
    if samples[list(COLUMNS)].isna().any().any():
        raise ValueError("samples have missing values (use 0 for unused lengths)")
    if (samples["latency_s"] <= 0).any() or (samples["num_sms"] <= 0).any():
        raise ValueError("latency_s and num_sms must be positive")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.parquet").unlink(missing_ok=True)  # would shadow the CSV on read
    extra = [c for c in samples.columns if c not in COLUMNS]
    samples[[*COLUMNS, *extra]].to_csv(out / "samples.csv", index=False)
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True, default=str))
    return out


def read_profile_table(directory: str | Path) -> tuple[pd.DataFrame, dict]:
    """(samples, metadata) of a profile directory."""
    path = Path(directory)
    parquet = path / "samples.parquet"
    samples = pd.read_parquet(parquet) if parquet.exists() else pd.read_csv(path / "samples.csv")
    meta_path = path / "metadata.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return samples, metadata


def _prefill_features(new_lens: Sequence[float], reused_lens: Sequence[float]) -> tuple[float, ...]:
    """Paper's prefill features in 1K-token units: Sum n^2, Sum n*r, Sum n, 1."""
    s2 = sum(n * n for n in new_lens) / 1024**2
    sp = sum(n * r for n, r in zip(new_lens, reused_lens)) / 1024**2
    return s2, sp, sum(new_lens) / 1024, 1.0


class _Grid:
    """Bilinear interpolation over a full rectangular grid of points (the usual calibration sweep);
    `fill` outside it. Pure Python: ~2 us a call, the simulator asks for every launch."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, fill: float) -> None:
        self.xs, self.ys = sorted(set(keys[:, 0].tolist())), sorted(set(keys[:, 1].tolist()))
        z = {(x, y): v for (x, y), v in zip(keys.tolist(), values.tolist())}
        self.z = [[z[(x, y)] for y in self.ys] for x in self.xs]
        self.fill = fill

    @staticmethod
    def _locate(axis: list[float], v: float) -> tuple[int, float] | None:
        if not axis[0] - 1e-9 <= v <= axis[-1] + 1e-9:
            return None
        if len(axis) == 1:
            return 0, 0.0
        i = min(max(bisect_right(axis, v) - 1, 0), len(axis) - 2)
        return i, min(max((v - axis[i]) / (axis[i + 1] - axis[i]), 0.0), 1.0)

    def __call__(self, x: float, y: float) -> float:
        at_x, at_y = self._locate(self.xs, x), self._locate(self.ys, y)
        if at_x is None or at_y is None:
            return self.fill
        (i, tx), (j, ty) = at_x, at_y
        i1, j1 = min(i + 1, len(self.xs) - 1), min(j + 1, len(self.ys) - 1)
        z = self.z
        return ((1 - tx) * ((1 - ty) * z[i][j] + ty * z[i][j1])
                + tx * ((1 - ty) * z[i1][j] + ty * z[i1][j1]))


class _Surface:
    """One phase on one SM count: least-squares fit of the paper's formula, times a correction ratio
    (measured / fit) interpolated linearly between samples in log coordinates (bilinear on a full grid,
    else Delaunay-linear, slower). Exact at sample points; outside the samples the plain fit extrapolates
    (it may jump there by the local fit error, a few percent when the formula fits)."""

    def __init__(self, features: np.ndarray, coords: np.ndarray, latency_s: np.ndarray) -> None:
        # relative-error weights: an unweighted fit lets long prefills dominate and goes <= 0 for short ones,
        # which then need correction ratios of 30-60x between samples
        weights = 1.0 / np.maximum(latency_s, MIN_PREDICTION_S)
        coefs, *_ = np.linalg.lstsq(features * weights[:, None], latency_s * weights, rcond=None)
        self.coefs: list[float] = coefs.tolist()
        ratio = latency_s / np.maximum(features @ coefs, MIN_PREDICTION_S)
        # Average repeated measurements at one coordinate.
        keys, inverse = np.unique(coords, axis=0, return_inverse=True)
        mean = np.bincount(inverse.ravel(), weights=ratio) / np.bincount(inverse.ravel())
        if len(keys) == len(set(keys[:, 0].tolist())) * len(set(keys[:, 1].tolist())):
            self.ratio = _Grid(keys, mean, fill=1.0)
        else:
            try:
                f = LinearNDInterpolator(keys, mean, fill_value=1.0)
                self.ratio = lambda x, y: float(f(x, y))
            except QhullError:  # degenerate scattered samples: the fit alone
                self.ratio = lambda x, y: 1.0

    def __call__(self, features: Sequence[float], coord: tuple[float, float]) -> float:
        return sum(f * c for f, c in zip(features, self.coefs)) * self.ratio(*coord)


class ProfileTableLatency:
    """LatencySource over measured samples. Per SM count: `_Surface` per phase; between measured SM
    counts, the two neighbours' predictions interpolated linearly in 1/SMs; clamped outside. mixed_s prices the
    chunks plus `batch` one-token rows with the prefill surface and adds the decode fit's KV term."""

    def __init__(self, directory: str | Path) -> None:
        samples, self.metadata = read_profile_table(directory)
        self.prefill_sms, self._prefill = self._build(samples[samples["phase"] == "prefill"], self._prefill_rows)
        self.decode_sms, self._decode = self._build(samples[samples["phase"] == "decode"], self._decode_rows)

    @staticmethod
    def _prefill_rows(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        b, n, r = (df[c].to_numpy(float) for c in ("batch", "new_len", "reused_len"))
        b = np.maximum(b, 1)
        features = np.column_stack([b * n * n / 1024**2, b * n * r / 1024**2, b * n / 1024, np.ones_like(n)])
        return features, np.column_stack([np.log2(b * n), np.log2(1 + r)])

    @staticmethod
    def _decode_rows(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        b, k = df["batch"].to_numpy(float), df["kv_len"].to_numpy(float)
        b = np.maximum(b, 1)  # coordinates: batch and mean context per request (a grid in usual sweeps)
        return np.column_stack([k / 1024, b, np.ones_like(b)]), np.column_stack([np.log2(b), np.log2(1 + k / b)])

    @staticmethod
    def _build(df: pd.DataFrame, rows) -> tuple[list[int], list[_Surface]]:
        sms, surfaces = [], []
        for num_sms, group in sorted(df.groupby("num_sms"), key=lambda g: g[0]):
            features, coords = rows(group)
            sms.append(int(num_sms))
            surfaces.append(_Surface(features, coords, group["latency_s"].to_numpy(float)))
        return sms, surfaces

    @staticmethod
    def _across_sms(sms: list[int], surfaces: list[_Surface], num_sms: int, features, coord) -> float:
        if not sms:
            raise ValueError("profile table has no samples for this phase")
        i = bisect_right(sms, num_sms)
        if i == 0 or i == len(sms) or sms[i - 1] == num_sms:
            value = surfaces[max(i - 1, 0)](features, coord)
        else:
            lo, hi = sms[i - 1], sms[i]
            w = (1 / num_sms - 1 / lo) / (1 / hi - 1 / lo)  # linear in 1/SMs: exact for compute-bound work
            value = (1 - w) * surfaces[i - 1](features, coord) + w * surfaces[i](features, coord)
        return max(value, MIN_PREDICTION_S)

    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        total = sum(new_lens)
        mean_reused = sum(n * r for n, r in zip(new_lens, reused_lens)) / total if total else 0.0
        coord = (math.log2(max(total, 1)), math.log2(1 + mean_reused))
        return self._across_sms(self.prefill_sms, self._prefill, num_sms,
                                _prefill_features(new_lens, reused_lens), coord)

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        features = (kv_len / 1024, batch, 1.0)
        coord = (math.log2(max(batch, 1)), math.log2(1 + kv_len / max(batch, 1)))
        return self._across_sms(self.decode_sms, self._decode, num_sms, features, coord)

    def _decode_kv_s(self, kv_len: int, num_sms: int) -> float:
        i = min(max(bisect_right(self.decode_sms, num_sms) - 1, 0), len(self.decode_sms) - 1)
        return max(self._decode[i].coefs[0], 0.0) * kv_len / 1024

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        if not new_lens:
            return self.decode_s(batch, kv_len, num_sms)
        prefill = self.prefill_s([*new_lens, *[1] * batch], [*reused_lens, *[0] * batch], num_sms)
        return prefill + (self._decode_kv_s(kv_len, num_sms) if batch and self.decode_sms else 0.0)
