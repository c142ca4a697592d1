"""Contention-tolerant performance model (DESIGN.md 4.3): solo latency per SM partition, fitted by least
squares, times a guard factor for what runs on the other lane.

Solo models (milliseconds, token counts in units of 1024 as in the public fits):
    prefill  T_p(s) = a*Sum(n_i^2) + b*Sum(n_i*r_i) + c*Sum(n_i) + d      (n new, r reused tokens)
    decode   T_d(s) = a*Sum(kv_j) + b*batch + c
    mixed    T_m(s) = prefill terms of the chunk + e*Sum(kv_j) + f*batch     (one fused chunked iteration)
Prefill and mixed are fitted per regime of total new tokens (like the public fits), each regime and SM
size by least squares on relative error. Other SM sizes interpolate linearly between fitted ones. Without
mixed samples, a mixed iteration is estimated as prefill + decode (an upper bound: the fused iteration
reads the weights once).
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from yoda.guard import GuardTable

PREFILL_REGIMES = (2048, 8192, float("inf"))  # upper bounds of total new tokens
# a fused iteration turns from weight-bandwidth-bound to compute-bound at a few hundred new tokens
MIXED_REGIMES = (384, 2048, float("inf"))


class Sample(NamedTuple):
    """One measured (or source-predicted) solo latency. Prefill: `batch` requests each with new_len new
    tokens over reused_len cached ones. Decode: `batch` requests attending kv_len tokens in total.
    Mixed: one prefill chunk (new_len over reused_len) and a decode batch (`batch`, kv_len) in one step."""

    phase: str
    num_sms: int
    new_len: int
    reused_len: int
    batch: int
    kv_len: int
    latency_s: float


def prefill_features(new_lens: Sequence[int], reused_lens: Sequence[int]) -> list[float]:
    n = [x / 1024 for x in new_lens]
    r = [x / 1024 for x in reused_lens]
    return [sum(a * a for a in n), sum(a * b for a, b in zip(n, r)), sum(n), 1.0]


def _prefill_terms(new_lens: Sequence[int], reused_lens: Sequence[int]) -> tuple[int, float, float, float]:
    """(total new tokens, Sum n^2, Sum n*r, Sum n) as in prefill_features, without lists for one chunk."""
    if len(new_lens) == 1:
        n, r = new_lens[0] / 1024, reused_lens[0] / 1024
        return new_lens[0], n * n, n * r, n
    f0, f1, f2, _ = prefill_features(new_lens, reused_lens)
    return sum(new_lens), f0, f1, f2


def decode_features(batch: int, kv_len: int) -> list[float]:
    return [kv_len / 1024, float(batch), 1.0]


def _sample_features(s: Sample) -> list[float]:
    if s.phase == "prefill":
        return prefill_features([s.new_len] * s.batch, [s.reused_len] * s.batch)
    if s.phase == "mixed":
        return prefill_features([s.new_len], [s.reused_len]) + decode_features(s.batch, s.kv_len)[:2]
    return decode_features(s.batch, s.kv_len)


def _mixed_regime(new_len: int) -> int:
    return bisect.bisect_left(MIXED_REGIMES, new_len)


def _group_regime(s: Sample) -> int:
    if s.phase == "prefill":
        return _regime(s.new_len * s.batch)
    return _mixed_regime(s.new_len) if s.phase == "mixed" else 0


def _regime(total_new: int) -> int:
    return bisect.bisect_left(PREFILL_REGIMES, total_new)


def _lstsq_relative(rows: list[list[float]], ys: list[float]) -> np.ndarray:
    x = np.asarray(rows, dtype=float)
    y = np.asarray(ys, dtype=float)
    w = 1.0 / np.maximum(y, 1e-12)  # minimise relative, not absolute, error
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    return coef


@dataclass(slots=True)
class FitReport:
    phase: str
    num_samples: int
    num_holdout: int
    mean_abs_err: float  # held-out mean |pred - meas| / meas
    p90_abs_err: float
    max_abs_err: float


@dataclass
class Estimator:
    prefill_coef: dict[int, dict[int, tuple[float, ...]]] = field(default_factory=dict)  # sms -> regime -> coef (ms)
    decode_coef: dict[int, tuple[float, ...]] = field(default_factory=dict)  # sms -> coef (ms)
    mixed_coef: dict[int, dict[int, tuple[float, ...]]] = field(default_factory=dict)  # sms -> regime -> coef (ms)
    decode_guard: GuardTable = field(default_factory=GuardTable)
    prefill_guard: GuardTable = field(default_factory=GuardTable)
    reports: list[FitReport] = field(default_factory=list)
    use_guard: bool = True

    # coefficients per (phase, SM count, regime) with the SM interpolation folded in (predictions are
    # linear in the coefficients); filled lazily, cleared when the fits change
    _effective: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- prediction -----------------------------------------------------------------------------
    # NOTE: plain-Python arithmetic: this runs at every decision point and numpy's call overhead dominates
    # for 3-4 features.
    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        total, f0, f1, f2 = _prefill_terms(new_lens, reused_lens)
        a, b, c, d = self._coef("prefill", num_sms, _regime(total))
        return max(a * f0 + b * f1 + c * f2 + d, 1e-6) / 1000

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        a, b, c = self._coef("decode", num_sms, 0)
        return max(a * kv_len / 1024 + b * batch + c, 1e-6) / 1000

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        """One fused iteration: prefill chunks and `batch` decode tokens (chunked prefill, piggyback)."""
        if not self.mixed_coef:
            return self.prefill_s(new_lens, reused_lens, num_sms) + self.decode_s(batch, kv_len, num_sms)
        total, f0, f1, f2 = _prefill_terms(new_lens, reused_lens)
        a, b, c, d, e, f = self._coef("mixed", num_sms, _mixed_regime(total))
        return max(a * f0 + b * f1 + c * f2 + d + e * kv_len / 1024 + f * batch, 1e-6) / 1000

    def _coef(self, phase: str, num_sms: int, regime: int) -> tuple[float, ...]:
        key = (phase, num_sms, regime)
        coef = self._effective.get(key)
        if coef is None:
            if phase == "prefill":
                coef = self._interp(self.prefill_coef, num_sms, lambda by: self._regime_coef(by, regime))
            elif phase == "mixed":
                coef = self._interp(self.mixed_coef, num_sms, lambda by: self._regime_coef(by, regime))
            else:
                coef = self._interp(self.decode_coef, num_sms, lambda c: c)
            self._effective[key] = coef
        return coef

    @staticmethod
    def _regime_coef(by_regime: dict[int, tuple[float, ...]], regime: int) -> tuple[float, ...]:
        if regime in by_regime:
            return by_regime[regime]
        nearest = min(by_regime, key=lambda k: abs(k - regime))
        return by_regime[nearest]

    @staticmethod
    def _interp(table: dict, num_sms: int, pick) -> tuple[float, ...]:
        """Coefficients at `num_sms`: linear between the nearest fitted sizes; outside the fitted range,
        the nearest size's scaled by SMs below it (compute-bound edge) and unchanged above it."""
        if not table:
            raise ValueError("estimator has no fitted coefficients")
        if num_sms in table:
            return tuple(pick(table[num_sms]))
        sizes = sorted(table)
        i = bisect.bisect_left(sizes, num_sms)
        lo, hi = sizes[max(i - 1, 0)], sizes[min(i, len(sizes) - 1)]
        c_lo, c_hi = pick(table[lo]), pick(table[hi])
        if lo == hi:
            scale = lo / num_sms if num_sms < lo else 1.0
            return tuple(c * scale for c in c_lo)
        w = (num_sms - lo) / (hi - lo)
        return tuple(a + w * (b - a) for a, b in zip(c_lo, c_hi))

    def decode_guarded_s(self, batch: int, kv_len: int, num_sms: int, prefill_new: int, prefill_reused: int) -> float:
        solo = self.decode_s(batch, kv_len, num_sms)
        if not self.use_guard or prefill_new == 0:
            return solo
        return solo * self.decode_guard.factor(num_sms, prefill_new, prefill_reused, batch, kv_len // max(batch, 1))

    def prefill_guarded_s(self, new_lens, reused_lens, num_sms: int, decode_batch: int, decode_kv_len: int) -> float:
        solo = self.prefill_s(new_lens, reused_lens, num_sms)
        if not self.use_guard or decode_batch == 0:
            return solo
        new, reused = sum(new_lens), sum(reused_lens)
        return solo * self.prefill_guard.factor(num_sms, new, reused, decode_batch, decode_kv_len // decode_batch)

    # ---- fitting ----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, samples: Sequence[Sample], holdout: float = 0.2, seed: int = 0) -> "Estimator":
        """Fit every (phase, SM size, regime) by least squares; report held-out relative error."""
        rng = random.Random(seed)
        est = cls()
        for phase in ("prefill", "decode", "mixed"):
            groups: dict[tuple[int, int], list[Sample]] = {}
            for s in samples:
                if s.phase == phase:
                    groups.setdefault((s.num_sms, _group_regime(s)), []).append(s)
            errors: list[float] = []
            num_train = num_test = 0
            for (sms, regime), group in sorted(groups.items()):
                rng.shuffle(group)
                cut = len(group) - max(1, int(len(group) * holdout)) if len(group) >= 8 else len(group)
                train, test = group[:cut], group[cut:]
                coef = tuple(float(c) for c in _lstsq_relative([_sample_features(s) for s in train],
                                                                [s.latency_s * 1000 for s in train]))
                if phase in ("prefill", "mixed"):
                    (est.prefill_coef if phase == "prefill" else est.mixed_coef).setdefault(sms, {})[regime] = coef
                else:
                    est.decode_coef[sms] = coef
                errors += [abs(sum(c * f for c, f in zip(coef, _sample_features(s))) / 1000 - s.latency_s) / s.latency_s
                           for s in test]
                num_train, num_test = num_train + len(train), num_test + len(test)
            if groups:
                err = np.asarray(errors) if errors else np.zeros(1)
                est.reports.append(FitReport(phase, num_train, num_test, float(err.mean()),
                                             float(np.percentile(err, 90)), float(err.max())))
        return est

    def refit_all(self, samples: Sequence[Sample]) -> "Estimator":
        """Refit on every sample (after the held-out check), keeping guards and reports."""
        full = Estimator.fit(samples, holdout=0.0)
        self.prefill_coef, self.decode_coef, self.mixed_coef = full.prefill_coef, full.decode_coef, full.mixed_coef
        self._effective.clear()
        return self
