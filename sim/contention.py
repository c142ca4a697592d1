"""How much a launch slows down while the other lane runs: HBM bandwidth and L2 are not partitioned.

slowdown(this, other) = 1 + max_slowdown * sensitivity(this) * pressure(other), in [1, 1 + max_slowdown].
- sensitivity: memory time / max(memory, compute time) of `this` launch on the roofline (decode 1,
  large prefill ~0.1-0.2),
  floored at min_sensitivity (compute-bound kernels still lose some L2/HBM time).
- pressure: share of HBM bandwidth the other launch draws: a memory-bound launch pulls what its SMs can
  (GpuSpec.bandwidth_share); a compute-bound one streams operands at a rate proportional to its SM share.
max_slowdown defaults to the GPU's worst case measured by the paper (30% H100, 20% A100), reached only by
a fully memory-bound launch beside a launch that saturates HBM. Deterministic, no state besides a cache.

Within physics: the two lanes together never draw more than the usable HBM bandwidth. A lane's demand is the
bytes per second it moves running alone on its partition (roofline bytes / roofline time = memory-bound
share x usable bandwidth of its SMs). When the demands exceed the usable bandwidth (GpuSpec HBM x
`RooflineLatency.mbu`, 80%: what decode kernels reach), it is shared max-min fairly (the smaller demand
is met up to half, the other lane gets the rest) and each lane stretches by demand / allocation. A lane's
slowdown is the larger of that and the interference term above. SMs are partitioned, never shared
(sim.gpu_instance refuses launches over the GPU's SM count).

Parameters and their sources:
- max_slowdown: the paper's measured worst co-run slowdown (H100 30%, A100 20%; GpuSpec.max_contention_slowdown);
- min_sensitivity 0.1: assumed L2 / HBM-queueing loss of a compute-bound kernel (not measured);
- usable bandwidth share 0.8: RooflineLatency.mbu (decode kernels ~80% of HBM peak);
- bandwidth saturation with SMs: GpuSpec.bandwidth_share (checked against the public H800 decode fits);
- mode "pessimistic": every slowdown's excess over 1 times `PESSIMISTIC_EXCESS` (1.5), a sensitivity setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sim.hardware import GpuSpec
from sim.latency import RooflineLatency
from sim.model_spec import ModelSpec
from yoda.backend import Launch

_CACHE_LIMIT = 8192
PESSIMISTIC_EXCESS = 1.5  # --contention pessimistic: 1.5x the default's excess slowdown
CONTENTION_MODES = ("default", "pessimistic")


def share_bandwidth(demand_a: float, demand_b: float, capacity: float) -> tuple[float, float]:
    """Max-min fair allocation of `capacity` bytes/s to two demands; each allocation <= its demand and
    their sum <= capacity."""
    if demand_a + demand_b <= capacity:
        return demand_a, demand_b
    if demand_a <= demand_b:
        small = min(demand_a, capacity / 2)
        return small, capacity - small
    small = min(demand_b, capacity / 2)
    return capacity - small, small


def _demand(memory_bound: float, usable_bytes_per_s: float, gpu: GpuSpec, num_sms: int) -> float:
    """HBM bytes per second of a lane that is `memory_bound` (0..1) alone on `num_sms` SMs."""
    return memory_bound * usable_bytes_per_s * gpu.bandwidth_share(num_sms)


@dataclass
class ContentionModel:
    max_slowdown: float | None = None  # None: gpu.max_contention_slowdown
    min_sensitivity: float = 0.1
    excess_scale: float = 1.0  # multiplies each slowdown's excess over 1 (PESSIMISTIC_EXCESS: pessimistic)
    # (gpu, model) -> (its roofline, {(batch, num_sms): (memory s, compute s) of a decode step at no KV
    # and per KV token}, {(prefill chunks, num_sms): profile}: a prefill job's layer groups share it (it
    # does not depend on layers))
    _rooflines: dict = field(default_factory=dict, repr=False, compare=False)
    _last_roofline: tuple | None = field(default=None, repr=False, compare=False)  # (gpu, model, entry)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_slowdown is not None and not 0 <= self.max_slowdown < 1:
            raise ValueError(f"max_slowdown must be in [0, 1), got {self.max_slowdown}")
        if not 0 <= self.min_sensitivity <= 1:
            raise ValueError(f"min_sensitivity must be in [0, 1], got {self.min_sensitivity}")
        if self.excess_scale < 1:
            raise ValueError(f"excess_scale must be >= 1 (below it lanes could exceed HBM), got {self.excess_scale}")

    @classmethod
    def for_mode(cls, mode: str) -> ContentionModel:
        if mode not in CONTENTION_MODES:
            raise ValueError(f"unknown contention mode {mode!r}; choose from {', '.join(CONTENTION_MODES)}")
        return cls(excess_scale=PESSIMISTIC_EXCESS if mode == "pessimistic" else 1.0)

    def slowdown(self, this: Launch, other: Launch | None, gpu: GpuSpec, model: ModelSpec) -> float:
        """Factor (>= 1) by which `this` launch's solo time stretches while `other` runs beside it."""
        if other is None:
            return 1.0
        return self.slowdowns(this, other, gpu, model)[0]

    def slowdowns(self, a: Launch, b: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        """(slowdown of `a` beside `b`, of `b` beside `a`): both lanes' factors from one profile lookup each."""
        cap = gpu.max_contention_slowdown if self.max_slowdown is None else self.max_slowdown
        sensitivity_a, pressure_a, memory_bound_a = self._lane(a, gpu, model)
        sensitivity_b, pressure_b, memory_bound_b = self._lane(b, gpu, model)
        usable = self.usable_bytes_per_s(gpu)
        demand_a = _demand(memory_bound_a, usable, gpu, a.num_sms)  # from the profiles already looked up
        demand_b = _demand(memory_bound_b, usable, gpu, b.num_sms)
        got_a, got_b = share_bandwidth(demand_a, demand_b, usable)
        slow_a = max(1.0 + cap * sensitivity_a * pressure_b, demand_a / got_a if got_a > 0 else 1.0)
        slow_b = max(1.0 + cap * sensitivity_b * pressure_a, demand_b / got_b if got_b > 0 else 1.0)
        return 1.0 + self.excess_scale * (slow_a - 1.0), 1.0 + self.excess_scale * (slow_b - 1.0)

    @staticmethod
    def usable_bytes_per_s(gpu: GpuSpec) -> float:
        """HBM bandwidth both lanes together can draw: peak x RooflineLatency.mbu."""
        return gpu.hbm_bytes_per_s * RooflineLatency.mbu

    def demand_bytes_per_s(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> float:
        """HBM bytes per second `launch` moves running alone on its partition (roofline)."""
        return _demand(self._lane(launch, gpu, model)[2], self.usable_bytes_per_s(gpu), gpu, launch.num_sms)

    def profile(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        """(sensitivity, pressure) of a launch, both in [0, 1]."""
        return self._lane(launch, gpu, model)[:2]

    def _lane(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float, float]:
        """(sensitivity, pressure, memory-bound share) of a launch."""
        # NOTE: keyed by identity (a launch is immutable and asked about many times while it runs);
        # the stored launch guards against id reuse after garbage collection.
        entry = self._cache.get(id(launch))
        if entry is not None and entry[0] is launch and entry[1] is gpu and entry[2] is model:
            return entry[3]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        found = self._profile(launch, gpu, model)
        self._cache[id(launch)] = (launch, gpu, model, found)
        return found

    def _profile(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float, float]:
        last = self._last_roofline  # NOTE: by identity first: hashing a GpuSpec and a ModelSpec is not free
        if last is not None and last[0] is gpu and last[1] is model:
            entry = last[2]
        else:
            entry = self._rooflines.get((gpu, model))
            if entry is None:
                entry = self._rooflines[(gpu, model)] = (RooflineLatency(model, gpu), {}, {})
            self._last_roofline = (gpu, model, entry)
        roofline, decode_lines, prefill_profiles = entry
        if launch.prefill and not launch.decode_ids:
            key = (launch.prefill, launch.num_sms)
            found = prefill_profiles.get(key)
            if found is None:
                if len(prefill_profiles) >= _CACHE_LIMIT:
                    prefill_profiles.clear()
                found = self._lane_profile(gpu, launch, *self._memory_compute_s(roofline, launch))
                prefill_profiles[key] = found
            return found
        if launch.prefill:
            memory_s, compute_s = self._memory_compute_s(roofline, launch)
        else:
            # a decode step's memory and compute times are each linear in its KV (the attention kernel's
            # bound side does not depend on it): two roofline evaluations per batch size and partition
            key = (len(launch.decode_ids), launch.num_sms)
            line = decode_lines.get(key)
            if line is None:
                probe = 1 << 20
                at_zero = self._memory_compute_s(roofline, launch, kv_len=0)
                at_probe = self._memory_compute_s(roofline, launch, kv_len=probe)
                line = decode_lines[key] = (*at_zero, (at_probe[0] - at_zero[0]) / probe,
                                            (at_probe[1] - at_zero[1]) / probe)
            kv = launch.decode_kv_len
            memory_s, compute_s = line[0] + line[2] * kv, line[1] + line[3] * kv
        return self._lane_profile(gpu, launch, memory_s, compute_s)

    def _lane_profile(self, gpu: GpuSpec, launch: Launch, memory_s: float, compute_s: float) -> tuple[float, float, float]:
        # 1 when memory-bound (its time stretches with lost bandwidth), memory/compute when compute-bound
        memory_bound = memory_s / max(memory_s, compute_s) if memory_s > 0 else 0.0
        sensitivity = max(self.min_sensitivity, memory_bound)
        pressure = (memory_bound * gpu.bandwidth_share(launch.num_sms)
                    + (1.0 - memory_bound) * gpu.compute_share(launch.num_sms))
        return sensitivity, min(1.0, pressure), memory_bound

    @staticmethod
    def _memory_compute_s(roofline: RooflineLatency, launch: Launch, kv_len: int | None = None) -> tuple[float, float]:
        """(memory-bound seconds, compute-bound seconds) of a launch on the roofline."""
        work = roofline.work([c.num_new for c in launch.prefill], [c.start_len for c in launch.prefill],
                             len(launch.decode_ids), launch.decode_kv_len if kv_len is None else kv_len)
        gemm_c, gemm_m, attn_c, attn_m = roofline.compute_memory_s(work, launch.num_sms)
        return gemm_m + attn_m, gemm_c + attn_c


@dataclass
class NoContention(ContentionModel):
    """Lanes never slow each other (an upper bound on what partitioning can give)."""

    def slowdowns(self, a: Launch, b: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        return 1.0, 1.0
