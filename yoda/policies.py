"""Policy registry: name -> factory(config, slo, **options). Plain dict, no registry classes."""
from __future__ import annotations

from typing import Callable

from yoda.baselines import ChunkedPrefill, PrefillFirst, StaticSplit, TemporalSplit
from yoda.request import SLO
from yoda.scheduler import SchedulerConfig

PolicyFactory = Callable[..., object]


def _yoda(config: SchedulerConfig, slo: SLO, **options):
    from yoda.gang_scheduler import GangScheduler
    return GangScheduler(config, slo, **options)


POLICIES: dict[str, PolicyFactory] = {
    "yoda": _yoda,
    "chunked": ChunkedPrefill,
    "prefill_first": PrefillFirst,
    "static_split": StaticSplit,
    "temporal": TemporalSplit,
    # "disagg" is built by the cluster (prefill and decode instances); see yoda/disaggregation.py
}
CLUSTER_POLICIES = ("disagg",)


def policy_names() -> list[str]:
    return [*POLICIES, *CLUSTER_POLICIES]


def make_scheduler(name: str, config: SchedulerConfig, slo: SLO, **options):
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(policy_names())}") from None
    return factory(config, slo, **options)
