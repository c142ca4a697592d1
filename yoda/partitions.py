"""The SM partition menu: (prefill SMs, decode SMs) pairs created once at start-up.

Green contexts split SMs in groups (8 on Hopper, 16 where kernels use thread-block clusters); the pairs
step by `step_sms`. Leftover SMs that do not fill a group (132 = 16 x 8 + 4 on H100) can only be used by
the full-GPU prefill-only and decode-only streams.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    decode_sms: int  # 0: prefill-only (whole GPU)
    prefill_sms: int  # 0: decode-only (whole GPU)

    @property
    def is_split(self) -> bool:
        return self.decode_sms > 0 and self.prefill_sms > 0


@dataclass(frozen=True, slots=True)
class PartitionMenu:
    num_sms: int
    granularity: int = 8
    step_sms: int = 16

    def __post_init__(self) -> None:
        if self.granularity < 1 or self.step_sms < self.granularity or self.step_sms % self.granularity:
            raise ValueError(f"partition step {self.step_sms} must be a positive multiple of granularity {self.granularity}")
        if self.usable_sms < 2 * self.step_sms:
            raise ValueError(f"{self.num_sms} SMs are too few for two partitions of {self.step_sms}")

    @property
    def usable_sms(self) -> int:
        return self.num_sms // self.granularity * self.granularity

    @property
    def splits(self) -> list[Partition]:
        """Split pairs, fewest decode SMs first."""
        u = self.usable_sms
        return [Partition(d, u - d) for d in range(self.step_sms, u - self.step_sms + 1, self.step_sms)]

    @property
    def decode_only(self) -> Partition:
        return Partition(self.num_sms, 0)

    @property
    def prefill_only(self) -> Partition:
        return Partition(0, self.num_sms)

    @property
    def all(self) -> list[Partition]:
        return [self.prefill_only, *self.splits, self.decode_only]

    def decode_sizes(self) -> list[int]:
        return [p.decode_sms for p in self.splits] + [self.num_sms]

    def prefill_sizes(self) -> list[int]:
        return sorted({p.prefill_sms for p in self.splits} | {self.num_sms})

    def largest_decode_within(self, free_sms: int) -> int | None:
        fits = [d for d in self.decode_sizes() if d <= free_sms]
        return max(fits) if fits else None
