"""Instances behind a dispatcher, arrivals (open loop or closed-loop sessions) and the KV transfer link."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import simpy

from sim.gpu_instance import GpuInstance
from yoda.disaggregation import DisaggPrefill
from yoda.kv_cache import chain_keys
from yoda.request import Request
from yoda.scheduler import RequestState


@dataclass(frozen=True, slots=True)
class Link:
    """Point-to-point KV transfer path between instances (RDMA / NVLink), FIFO per destination."""

    bandwidth_gbps: float = 25.0  # GB/s (200 Gb/s RDMA NIC)
    latency_s: float = 50e-6

    def transfer_s(self, num_bytes: float) -> float:
        return self.latency_s + num_bytes / (self.bandwidth_gbps * 1e9)


class Cluster:
    def __init__(self, env: simpy.Environment, instances: Sequence[GpuInstance], dispatcher,
                 kv_bytes_per_token: float = 0.0, link: Link | None = None, kv_return: str = "move",
                 stream_layers: int = 0) -> None:
        if kv_return not in ("move", "recompute"):
            raise ValueError("kv_return must be 'move' or 'recompute'")
        self.env, self.instances, self.dispatcher = env, list(instances), dispatcher
        self.link, self.kv_bytes_per_token, self.kv_return = link or Link(), kv_bytes_per_token, kv_return
        # > 0: a prefill's KV streams to the decode instance layer by layer while it is computed (DistServe,
        # Mooncake), so only the last layer's share is left when the prefill ends; 0: sent after the prefill
        self.stream_layers = stream_layers
        self.prefill = [g for g in self.instances if getattr(g.scheduler, "role", None) != "decode"]
        self.decode = [g for g in self.instances if getattr(g.scheduler, "role", None) == "decode"]
        self._link_free_at: dict[int, float] = {}
        self.num_transfers = 0
        self.transferred_bytes = 0.0
        self._tmp_ids = -1
        for g in self.prefill:
            if isinstance(g.scheduler, DisaggPrefill):
                g.scheduler.handoff = self._handoff

    # ---- arrivals ---------------------------------------------------------------------------------
    def replay_open_loop(self, requests: Sequence[Request]):
        """SimPy process: requests arrive at their own times."""
        for request in requests:
            delay = request.arrival_at - self.env.now
            if delay > 0:
                yield self.env.timeout(delay)
            self.dispatch(request)

    def dispatch(self, request: Request) -> None:
        schedulers = [g.scheduler for g in self.prefill]
        index = self.dispatcher.pick(request, schedulers, self.env.now) if len(schedulers) > 1 else 0
        target = self.prefill[index]
        if self.decode and self.kv_return == "move" and request.block_hashes:
            delay = self._move_back(request, target)
            if delay > 0:
                self.env.timeout(delay).callbacks.append(lambda _e: target.submit(request))
                return
        target.submit(request)

    # ---- disaggregation -------------------------------------------------------------------------------
    def _handoff(self, state: RequestState, now: float, prefill_started_at: float | None = None) -> None:
        dst = min(self.decode, key=lambda g: (len(g.scheduler.states), self.decode.index(g)))
        # only the blocks the decode instance does not hold already move (a shared document, an earlier turn)
        cached = dst.scheduler.kv.match_prefix(state.chain) * dst.scheduler.config.block_size
        num_bytes = max(state.context_len - 1 - cached, 0) * self.kv_bytes_per_token
        produced_from = prefill_started_at if self.stream_layers else None
        self.env.timeout(self._reserve_link(dst, num_bytes, produced_from)).callbacks.append(
            lambda _e: (dst.scheduler.receive(state, self.env.now), dst.kick()))

    def _reserve_link(self, dst: GpuInstance, num_bytes: float, produced_from: float | None = None) -> float:
        """Delay until a transfer to `dst` completes, queueing behind earlier transfers to it. With
        `produced_from` the KV streamed while it was computed (from then until now): the link carried it
        from then on, but the last layer's share can leave only now."""
        now = self.env.now
        start = max(now if produced_from is None else min(produced_from, now), self._link_free_at.get(dst.index, 0.0))
        done = start + self.link.transfer_s(num_bytes)
        if produced_from is not None:
            done = max(done, now + self.link.transfer_s(num_bytes / self.stream_layers))
        self._link_free_at[dst.index] = done
        self.num_transfers += 1
        self.transferred_bytes += num_bytes
        return done - self.env.now

    def _move_back(self, request: Request, target: GpuInstance) -> float:
        """Copy a longer cached prefix from a decode instance into the prefill instance's cache."""
        sched = target.scheduler
        chain = chain_keys(request.block_keys(sched.config.block_size))
        local = sched.kv.match_prefix(chain)
        remote = max((g.scheduler.kv.match_prefix(chain) for g in self.decode), default=0)
        if remote <= local:
            return 0.0
        tokens = remote * sched.config.block_size
        self._tmp_ids -= 1
        if not sched.install_prefix(chain[:remote], tokens, self._tmp_ids):
            return 0.0
        return self._reserve_link(target, (remote - local) * sched.config.block_size * self.kv_bytes_per_token)

    def records(self):
        out = [r for g in self.prefill for r in g.scheduler.records]
        return sorted(out, key=lambda r: r.request_id)
