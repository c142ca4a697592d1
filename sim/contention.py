"""How much a launch slows down while the other lane runs: HBM bandwidth and L2 are not partitioned.

slowdown(this, other) = 1 + max_slowdown * sensitivity(this) * pressure(other), in [1, 1 + max_slowdown].
- sensitivity: memory time / max(memory, compute time) of `this` launch on the roofline (decode 1,
  large prefill ~0.1-0.2),
  floored at min_sensitivity (compute-bound kernels still lose some L2/HBM time).
- pressure: share of HBM bandwidth the other launch draws: a memory-bound launch pulls what its SMs can
  (GpuSpec.bandwidth_share); a compute-bound one streams operands at a rate proportional to its SM share.
max_slowdown defaults to the GPU's worst case measured by the paper (30% H100, 20% A100), reached only by
a fully memory-bound launch beside a launch that saturates HBM. Deterministic, no state besides a cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sim.hardware import GpuSpec
from sim.latency import RooflineLatency
from sim.model_spec import ModelSpec
from yoda.backend import Launch

_CACHE_LIMIT = 8192


@dataclass
class ContentionModel:
    max_slowdown: float | None = None  # None: gpu.max_contention_slowdown
    min_sensitivity: float = 0.1
    # (gpu, model) -> (its roofline, {(batch, num_sms): (memory s, compute s) of a decode step at no KV
    # and per KV token})
    _rooflines: dict = field(default_factory=dict, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    # (prefill chunks, num_sms) -> profile: a prefill job's layer groups share it (it does not depend on layers)
    _prefill_profiles: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_slowdown is not None and not 0 <= self.max_slowdown < 1:
            raise ValueError(f"max_slowdown must be in [0, 1), got {self.max_slowdown}")
        if not 0 <= self.min_sensitivity <= 1:
            raise ValueError(f"min_sensitivity must be in [0, 1], got {self.min_sensitivity}")

    def slowdown(self, this: Launch, other: Launch | None, gpu: GpuSpec, model: ModelSpec) -> float:
        """Factor (>= 1) by which `this` launch's solo time stretches while `other` runs beside it."""
        if other is None:
            return 1.0
        return self.slowdowns(this, other, gpu, model)[0]

    def slowdowns(self, a: Launch, b: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        """(slowdown of `a` beside `b`, of `b` beside `a`): both lanes' factors from one profile lookup each."""
        cap = gpu.max_contention_slowdown if self.max_slowdown is None else self.max_slowdown
        sensitivity_a, pressure_a = self.profile(a, gpu, model)
        sensitivity_b, pressure_b = self.profile(b, gpu, model)
        return 1.0 + cap * sensitivity_a * pressure_b, 1.0 + cap * sensitivity_b * pressure_a

    def profile(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        """(sensitivity, pressure) of a launch, both in [0, 1]."""
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

    def _profile(self, launch: Launch, gpu: GpuSpec, model: ModelSpec) -> tuple[float, float]:
        entry = self._rooflines.get((gpu, model))
        if entry is None:
            entry = self._rooflines[(gpu, model)] = (RooflineLatency(model, gpu), {})
        roofline, decode_lines = entry
        if launch.prefill and not launch.decode_ids:
            key = (launch.prefill, launch.num_sms, gpu, model)
            found = self._prefill_profiles.get(key)
            if found is None:
                if len(self._prefill_profiles) >= _CACHE_LIMIT:
                    self._prefill_profiles.clear()
                found = self._lane_profile(gpu, launch, *self._memory_compute_s(roofline, launch))
                self._prefill_profiles[key] = found
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

    def _lane_profile(self, gpu: GpuSpec, launch: Launch, memory_s: float, compute_s: float) -> tuple[float, float]:
        # 1 when memory-bound (its time stretches with lost bandwidth), memory/compute when compute-bound
        memory_bound = memory_s / max(memory_s, compute_s) if memory_s > 0 else 0.0
        sensitivity = max(self.min_sensitivity, memory_bound)
        pressure = (memory_bound * gpu.bandwidth_share(launch.num_sms)
                    + (1.0 - memory_bound) * gpu.compute_share(launch.num_sms))
        return sensitivity, min(1.0, pressure)

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
