"""GPU specifications and how compute and HBM bandwidth scale with the SM partition a lane runs on."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GpuSpec:
    """One GPU. Peak numbers are vendor datasheet values (dense bf16, no sparsity)."""

    name: str
    num_sms: int
    bf16_tflops: float  # dense peak, TFLOP/s
    hbm_gbps: float  # HBM bandwidth, GB/s (10^9 bytes/s)
    hbm_gib: float  # HBM capacity, GiB
    sm_granularity: int = 8  # green contexts split SMs in groups of this many (Hopper: 8)
    partition_step: int = 16  # default step of the partition menu (thread-block clusters need 16)
    # Fraction of the SMs at which a memory-bound kernel draws ~95% of the GPU's HBM bandwidth.
    # DESIGN 1: with about half of the 132 SMs a decode step runs within 1-12% of its full-GPU time.
    bandwidth_saturation_fraction: float = 0.45
    nvlink_gbps: float = 450.0  # per-GPU unidirectional NVLink bandwidth, GB/s (tensor-parallel all-reduce)
    max_contention_slowdown: float = 0.30  # worst co-run slowdown measured by the paper (H100 30%, A100 20%)

    def __post_init__(self) -> None:
        if self.num_sms <= 0 or self.bf16_tflops <= 0 or self.hbm_gbps <= 0 or self.hbm_gib <= 0:
            raise ValueError(f"GpuSpec {self.name!r}: SMs, TFLOP/s, GB/s and GiB must be positive")
        if not 0 < self.bandwidth_saturation_fraction <= 1:
            raise ValueError(f"GpuSpec {self.name!r}: bandwidth_saturation_fraction must be in (0, 1]")
        if self.sm_granularity <= 0 or self.partition_step % self.sm_granularity:
            raise ValueError(f"GpuSpec {self.name!r}: partition_step must be a multiple of sm_granularity")
        if not 0 <= self.max_contention_slowdown < 1:
            raise ValueError(f"GpuSpec {self.name!r}: max_contention_slowdown must be in [0, 1)")

    @property
    def peak_flops(self) -> float:
        """Dense bf16 peak, FLOP/s."""
        return self.bf16_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gbps * 1e9

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gib * 2**30

    @property
    def nvlink_bytes_per_s(self) -> float:
        return self.nvlink_gbps * 1e9

    def compute_share(self, num_sms: int) -> float:
        """Share of peak FLOP/s available on `num_sms` SMs: linear in SMs."""
        return min(max(num_sms, 0), self.num_sms) / self.num_sms

    def bandwidth_share(self, num_sms: int) -> float:
        """Share of HBM bandwidth `num_sms` SMs can draw: saturating, (1 - e^(-k x)) / (1 - e^(-k)).

        x = num_sms / self.num_sms and k = 3 / bandwidth_saturation_fraction, so the share is ~95% at the
        saturation fraction and exactly 1 on the whole GPU. With the H100 default (0.45) this gives
        0.33 / 0.55 / 0.80 / 0.97 at 8 / 16 / 32 / 66 SMs, close to the public H800 decode fits
        (decode step 3.0x / 1.8x / 1.24x / 1.05x slower than on 132 SMs).
        """
        return _bandwidth_share(num_sms, self.num_sms, self.bandwidth_saturation_fraction)

    def partition_sizes(self) -> list[int]:
        """SM counts of the default partition menu: multiples of partition_step, plus the whole GPU."""
        sizes = list(range(self.partition_step, self.num_sms, self.partition_step))
        return sizes + [self.num_sms]


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("h100", num_sms=132, bf16_tflops=989.0, hbm_gbps=3350.0, hbm_gib=80.0),
    "h200": GpuSpec("h200", num_sms=132, bf16_tflops=989.0, hbm_gbps=4800.0, hbm_gib=141.0),
    "h800": GpuSpec("h800", num_sms=132, bf16_tflops=989.0, hbm_gbps=3350.0, hbm_gib=80.0, nvlink_gbps=200.0),
    "a100": GpuSpec("a100", num_sms=108, bf16_tflops=312.0, hbm_gbps=2039.0, hbm_gib=80.0, nvlink_gbps=300.0,
                    max_contention_slowdown=0.20),
}


def get_gpu(name: str) -> GpuSpec:
    """Built-in GPU by name (case-insensitive)."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r}; known GPUs: {', '.join(sorted(GPUS))}") from None


@lru_cache(maxsize=4096)
def _bandwidth_share(num_sms: int, total_sms: int, saturation_fraction: float) -> float:
    """GpuSpec.bandwidth_share, memoised (it runs several times per simulated launch)."""
    x = min(max(num_sms, 0), total_sms) / total_sms
    k = 3.0 / saturation_fraction
    return (1.0 - math.exp(-k * x)) / (1.0 - math.exp(-k))
