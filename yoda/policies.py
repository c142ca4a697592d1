"""Policy registry: name -> factory(config, slo, **options). Plain dict, no registry classes.

Every per-GPU policy takes `admission="fcfs"` or `"deadline"` (Yoda's TTFT-deadline order,
`yoda/slack_admission.py`): the baselines ship with FCFS, Yoda with deadline."""
from __future__ import annotations

from typing import Callable

from yoda.baselines import ChunkedPrefill, PrefillFirst, StaticSplit, TemporalSplit
from yoda.request import SLO
from yoda.scheduler import SchedulerConfig
from yoda.slack_admission import ADMISSIONS

PolicyFactory = Callable[..., object]


def _yoda(config: SchedulerConfig, slo: SLO, admission: str = "deadline", **options):
    """Yoda; `admission="fcfs"` keeps its PD multiplexing but admits and orders prefills by arrival."""
    from yoda.gang_scheduler import GangScheduler
    if admission not in ADMISSIONS:
        raise ValueError(f"admission must be one of {', '.join(ADMISSIONS)}, got {admission!r}")
    scheduler = GangScheduler(config, slo, **options)
    scheduler.admission = admission
    return scheduler


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
