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
        self._inbound: dict[int, int] = {}  # decode instance -> requests whose KV is on its way there
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
    def _handoff(self, states: list[RequestState], now: float, prefill_started_at: list[float]) -> None:
        """Move the KV of requests whose prefill ended together to decode instances; transfers to one
        destination share the link side by side (each gets an equal share of the bandwidth)."""
        by_dst: dict[GpuInstance, list[tuple[RequestState, float]]] = {}
        for state, started_at in zip(states, prefill_started_at):
            # the least loaded decode instance, counting the requests already on their way to it
            dst = min(self.decode, key=lambda g: (len(g.scheduler.states) + self._inbound.get(g.index, 0), g.index))
            self._inbound[dst.index] = self._inbound.get(dst.index, 0) + 1
            by_dst.setdefault(dst, []).append((state, started_at))
        for dst, group in by_dst.items():
            # only the blocks the decode instance does not hold already move (a shared document, an earlier turn)
            sizes = [self._bytes_to_move(dst, state) for state, _ in group]
            produced_from = min(at for _, at in group) if self.stream_layers else None
            for (state, _), delay in zip(group, self._reserve_link(dst, sizes, produced_from)):
                self.env.timeout(delay).callbacks.append(lambda _e, s=state, d=dst: self._arrive(s, d))

    def _bytes_to_move(self, dst: GpuInstance, state: RequestState) -> float:
        cached = dst.scheduler.kv.match_prefix(state.chain) * dst.scheduler.config.block_size
        return max(state.context_len - 1 - cached, 0) * self.kv_bytes_per_token

    def _arrive(self, state: RequestState, dst: GpuInstance) -> None:
        self._inbound[dst.index] -= 1
        dst.scheduler.receive(state, self.env.now)
        dst.kick()

    def _reserve_link(self, dst: GpuInstance, sizes: Sequence[float], produced_from: float | None = None) -> list[float]:
        """Delays until each of several transfers to `dst` that start together completes. They queue behind
        earlier transfers to `dst` and then share the link fairly (processor sharing: the smallest ends
        first, when every flow has sent that much). With `produced_from` the KV streamed while it was
        computed (from then until now): the link carried it from then on, but the last layer's share can
        leave only now."""
        now = self.env.now
        start = max(now if produced_from is None else min(produced_from, now), self._link_free_at.get(dst.index, 0.0))
        bandwidth = self.link.bandwidth_gbps * 1e9
        done = [0.0] * len(sizes)
        sent = 0.0  # bytes of the flows already finished
        order = sorted(range(len(sizes)), key=lambda k: sizes[k])
        for rank, k in enumerate(order):
            done[k] = start + self.link.latency_s + (sent + (len(sizes) - rank) * sizes[k]) / bandwidth
            sent += sizes[k]
            if produced_from is not None:
                done[k] = max(done[k], now + self.link.transfer_s(sizes[k] / self.stream_layers))
        self._link_free_at[dst.index] = max(done, default=start)
        self.num_transfers += len(sizes)
        self.transferred_bytes += sum(sizes)
        return [d - now for d in done]

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
        return self._reserve_link(target, [(remote - local) * sched.config.block_size * self.kv_bytes_per_token])[0]

    def records(self):
        out = [r for g in self.prefill for r in g.scheduler.records]
        return sorted(out, key=lambda r: r.request_id)
