"""SM partitions: disjoint (prefill, decode) stream pairs made from CUDA green contexts, created once.

The device's SMs are split once into equal groups (8 SMs on Hopper; 132 SMs = 16 groups + 4 left over).
Prefill partitions take groups from the low end, decode partitions from the high end plus the leftover
SMs, so any prefill partition and decode partition whose groups add up to at most the total are disjoint:
    prefill_sms = p * group_sms, decode_sms = d * group_sms + remainder_sms, p + d <= num_groups.
Full-GPU prefill-only and decode-only streams (ordinary streams, all SMs) complete the menu.
Without CUDA or green contexts there is one lane: every launch gets the same stream (None on the CPU),
and `reason` says why. Needs `cuda.bindings` (cuda-python) and a driver with green contexts (CUDA >= 12.4).
Each partition is built and checked on its own (realised SM count read back against its groups): one that
fails is listed in `failures` and only the menu pairs that need it are dropped. A decode partition whose
descriptor refuses the leftover SMs is retried on its whole groups alone. `build_green` takes the driver
module as an argument, so executor.fake_driver can stand in for it on a machine without a GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from yoda.backend import DECODE, LANES, PREFILL


@dataclass(frozen=True, slots=True)
class PartitionPair:
    """One (prefill, decode) split: prefill on groups [0, p), decode on groups [G - d, G) + the leftover SMs."""

    prefill_groups: int
    decode_groups: int
    group_sms: int
    remainder_sms: int

    @property
    def prefill_sms(self) -> int:
        return self.prefill_groups * self.group_sms

    @property
    def decode_sms(self) -> int:
        return self.decode_groups * self.group_sms + self.remainder_sms


class PartitionInfo(NamedTuple):
    lane: str
    planned_sms: int
    realised_sms: int  # what the green context reports (cuGreenCtxGetDevResource)
    create_s: float  # descriptor + green context + stream creation time


def default_menu(num_groups: int, group_sms: int, remainder_sms: int, step_groups: int = 2) -> list[PartitionPair]:
    """Decode on 2, 4, ... groups (plus leftover), prefill on the rest: 7 pairs at 16-SM steps on an H100."""
    return [PartitionPair(num_groups - d, d, group_sms, remainder_sms)
            for d in range(step_groups, num_groups - 1, step_groups)]


def menu_from_sms(pairs: Sequence[tuple[int, int]], num_groups: int, group_sms: int,
                  remainder_sms: int) -> list[PartitionPair]:
    """Round requested (prefill_sms, decode_sms) pairs to whole groups: prefill down, decode up, disjoint."""
    out = []
    for prefill_sms, decode_sms in pairs:
        p = prefill_sms // group_sms
        d = min(num_groups - p, max(0, -(-(decode_sms - remainder_sms) // group_sms)))
        if p < 1 or (d < 1 and remainder_sms == 0):
            raise ValueError(f"pair ({prefill_sms}, {decode_sms}) leaves a lane without SMs "
                             f"({num_groups} groups of {group_sms} + {remainder_sms})")
        out.append(PartitionPair(p, d, group_sms, remainder_sms))
    return out


class PartitionManager:
    """Streams by (lane, num_sms). Build with `create` (CUDA work) or `single_lane` (fallback)."""

    def __init__(self, device: torch.device, num_sms: int, menu: list[PartitionPair],
                 streams: dict[str, dict[int, object]], reason: str, infos: list[PartitionInfo],
                 keep: list | None = None, failures: list[str] | None = None) -> None:
        self.device = device
        self.num_sms = num_sms
        self.menu = menu
        self.reason = reason  # why there are no partitions; "" when there are
        self.infos = infos
        self._streams = streams  # lane -> num_sms -> stream; empty when single lane
        self._single: object = None
        self._keep = keep or []  # green contexts and raw streams, alive as long as the manager
        self.failures = failures or []  # partitions that could not be built: "lane N SMs: why"

    @property
    def is_partitioned(self) -> bool:
        return bool(self._streams)

    @classmethod
    def single_lane(cls, device: torch.device | str, reason: str) -> "PartitionManager":
        device = torch.device(device)
        num_sms = 1
        manager = cls(device, num_sms, [], {}, reason, [])
        if device.type == "cuda":  # a side stream: graphs cannot be captured on the legacy default stream
            manager.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
            manager._single = torch.cuda.Stream(device)
        return manager

    @classmethod
    def create(cls, device: torch.device | str, menu: Sequence[tuple[int, int]] | None = None,
               group_sms: int = 8) -> "PartitionManager":
        """Split the GPU once and build every partition's stream; falls back to one lane with a reason."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls.single_lane(device, f"{device.type} device: one lane, no partitions")
        if not torch.cuda.is_available():
            return cls.single_lane(torch.device("cpu"), "CUDA unavailable: one lane, no partitions")
        try:
            from cuda.bindings import driver  # cuda-python
        except ImportError as e:
            return cls.single_lane(device, f"cuda.bindings not importable ({e}): one lane")
        try:
            torch.zeros(1, device=device)  # torch's primary context exists before the driver API is used
            built = build_green(driver, device.index or 0, menu, group_sms,
                                lambda raw: torch.cuda.ExternalStream(int(raw), device=device) if raw is not None
                                else torch.cuda.Stream(device))
        except Exception as e:  # old driver or bindings, MIG, unsupported split: run on one lane, say why
            return cls.single_lane(device, f"green contexts unavailable ({type(e).__name__}: {e}): one lane")
        if not built.pairs:
            manager = cls.single_lane(device, "no partition pair could be built: " + "; ".join(built.failures))
            manager.failures = built.failures
            return manager
        return cls(device, built.num_sms, built.pairs, built.streams, "", built.infos, built.keep, built.failures)

    def stream_for(self, lane: str, num_sms: int):
        """The stream for a launch on `lane` with `num_sms` SMs (None on the CPU; the one stream if single lane)."""
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        if not self._streams:
            return self._single
        by_sms = self._streams[lane]
        if num_sms not in by_sms:
            raise ValueError(f"no {lane} partition of {num_sms} SMs; menu: {sorted(by_sms)}")
        return by_sms[num_sms]

    def sm_options(self, lane: str) -> list[int]:
        """SM counts a launch on `lane` may ask for."""
        return sorted(self._streams[lane]) if self._streams else [self.num_sms]

    def decode_streams(self) -> dict[int, object]:
        """num_sms -> stream of every decode partition (one entry when single lane on CUDA; none on the CPU)."""
        if self._streams:
            return dict(self._streams[DECODE])
        return {self.num_sms: self._single} if self._single is not None else {}


def partition_resources(pairs: Sequence[PartitionPair], groups: Sequence, leftover: Sequence) -> list[tuple]:
    """(lane, planned_sms, resources) for every distinct partition of the menu: prefill takes the first
    groups, decode the last groups plus the leftover SMs (one green context each, shared by the pairs)."""
    sizes = sorted({(PREFILL, p.prefill_groups, p.prefill_sms) for p in pairs}
                   | {(DECODE, p.decode_groups, p.decode_sms) for p in pairs})
    return [(lane, planned, list(groups[:count]) if lane == PREFILL
             else list(groups[len(groups) - count:]) + list(leftover)) for lane, count, planned in sizes]


class GreenBuild(NamedTuple):
    num_sms: int
    pairs: list[PartitionPair]  # the menu pairs whose two partitions were both built
    streams: dict[str, dict[int, object]]  # lane -> realised SMs -> stream (as `wrap` made it)
    infos: list[PartitionInfo]
    failures: list[str]
    keep: list  # driver handles to keep alive


def _check(driver, result: tuple):
    """cuda.bindings calls return (CUresult, *values): raise on error, unwrap the values."""
    err, values = result[0], result[1:]
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"CUDA driver error {err!r}")
    return values[0] if len(values) == 1 else values


def _green_stream(driver, dev, resources: list) -> tuple[object, int, list]:
    """A non-blocking raw stream in a new green context over `resources`; (stream, realised SMs, handles)."""
    desc = _check(driver, driver.cuDevResourceGenerateDesc(resources, len(resources)))
    ctx = _check(driver, driver.cuGreenCtxCreate(desc, dev, driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
    raw = _check(driver, driver.cuGreenCtxStreamCreate(ctx, driver.CUstream_flags.CU_STREAM_NON_BLOCKING, 0))
    realised = _check(driver, driver.cuGreenCtxGetDevResource(ctx, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
    return raw, int(realised.sm.smCount), [ctx, raw]


def _one_partition(driver, dev, lane: str, resources: list, has_leftover: bool) -> tuple:
    """(raw stream, planned SMs, realised SMs, handles, note) for one partition, checked on its own: the
    realised SM count must equal its resources' total. A decode partition that fails with the leftover SMs
    is retried without them (a descriptor mixing the split's groups and its remainder may be refused)."""
    attempts = [resources, resources[:-1]] if has_leftover and len(resources) > 1 else [resources]
    errors = []
    for chosen in attempts:
        planned = sum(int(r.sm.smCount) for r in chosen)
        try:
            raw, realised, handles = _green_stream(driver, dev, chosen)
        except Exception as e:
            errors.append(f"{planned} SMs: {e}")
            continue
        if realised != planned:
            errors.append(f"{planned} SMs: realised {realised}")
            continue
        note = f"leftover SMs refused ({errors[0]})" if errors else ""
        return raw, planned, realised, handles, note
    raise RuntimeError("; ".join(errors))


def build_green(driver, ordinal: int, menu: Sequence[tuple[int, int]] | None, group_sms: int,
                wrap) -> GreenBuild:
    """Split device `ordinal` into groups and build every partition of the menu with `driver` (cuda.bindings'
    driver module, or a fake); `wrap(raw)` makes a stream object of a raw green stream, `wrap(None)` an
    ordinary full-GPU stream. Raises only if the device cannot be split at all."""
    _check(driver, driver.cuInit(0))
    dev = _check(driver, driver.cuDeviceGet(ordinal))
    whole = _check(driver, driver.cuDeviceGetDevResource(dev, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
    total = int(whole.sm.smCount)
    groups, num_groups, remainder = _check(driver, driver.cuDevSmResourceSplitByCount(total // group_sms, whole, 0,
                                                                                      group_sms))
    groups, num_groups = list(groups)[:int(num_groups)], int(num_groups)
    group_sms = int(groups[0].sm.smCount)  # the driver may round the group size up
    leftover = [remainder] if remainder is not None and int(remainder.sm.smCount) > 0 else []
    rem_sms = int(remainder.sm.smCount) if leftover else 0
    pairs = (menu_from_sms(menu, num_groups, group_sms, rem_sms) if menu
             else default_menu(num_groups, group_sms, rem_sms))
    streams: dict[str, dict[int, object]] = {PREFILL: {}, DECODE: {}}
    infos, keep, failures = [], [], []
    built: dict[tuple[str, int], int] = {}  # (lane, planned SMs) -> realised SMs
    for lane, planned, chosen in partition_resources(pairs, groups, leftover):
        t0 = time.perf_counter()
        try:
            raw, _, realised, handles, note = _one_partition(driver, dev, lane, chosen, lane == DECODE and bool(leftover))
        except Exception as e:  # this partition only: the pairs that need it leave the menu
            failures.append(f"{lane} {planned} SMs: {e}")
            continue
        if note:
            failures.append(f"{lane} {planned} SMs: {note}; built on {realised}")
        streams[lane][realised] = wrap(raw)
        built[(lane, planned)] = realised
        infos.append(PartitionInfo(lane, planned, realised, time.perf_counter() - t0))
        keep.extend(handles)
    kept = []
    for p in pairs:
        d = built.get((DECODE, p.decode_sms))
        if (PREFILL, p.prefill_sms) in built and d is not None:
            kept.append(p if d == p.decode_sms else PartitionPair(p.prefill_groups, p.decode_groups, group_sms, 0))
    for lane in LANES:  # full-GPU prefill-only and decode-only: ordinary streams see every SM
        streams[lane][total] = wrap(None)
        infos.append(PartitionInfo(lane, total, total, 0.0))
    return GreenBuild(total, kept, streams, infos, failures, keep)
