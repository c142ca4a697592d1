"""The real backend: runs a scheduler's Launches (yoda/backend.py) on the model, the KV pool and the partitions.

    engine = Engine(model, kv_pool, kv_cache, device, partitions, seed=0, temperature=0.0)
    engine.add_request(request_id, prompt_token_ids)
    engine.start(launch, now)                    # decode step, prefill layer groups, or both
    for launch, finished_at in engine.poll(now):   # never blocks; tokens are visible from here on
        scheduler.on_launch_done(launch, finished_at)

The scheduler owns the KV cache manager: it allocates/extends a request's blocks (seq_id == request_id)
before launching and frees them after; the engine only reads `kv_cache.block_table(request_id)`.
On CUDA a launch runs on the partition stream for (lane, num_sms) and completion is an event query; on
the CPU it runs synchronously in `start` and is reported by the next `poll`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from executor.attn_metadata import SeqSlice, build_attn_metadata, choose_num_splits
from executor.decode_graph import DecodeGraphs
from executor.kv_pool import KVPool
from executor.model import DecoderModel
from executor.partitions import PartitionManager
from executor.sampling import SampleOutput, SamplingParams, sample
from yoda.backend import Launch, PrefillChunk
from yoda.kv_cache import KVCache


@dataclass(slots=True)
class _Pending:
    """A prefill chunk between layer groups: hidden state after layers [0, next_layer)."""

    start_len: int
    num_new: int
    next_layer: int
    hidden: torch.Tensor  # [num_new, hidden]
    ready: torch.cuda.Event | None  # recorded after `hidden` was written (CUDA only)


@dataclass(slots=True)
class _Seq:
    token_ids: list[int]  # prompt, then sampled tokens
    prompt_len: int
    num_computed: int = 0  # tokens whose KV is in the pool for every layer
    pending: _Pending | None = None
    sampling: SamplingParams | None = None  # None: the engine's temperature
    logprobs: list = field(default_factory=list)  # per output token (chosen, [(id, logprob)]) when asked for


@dataclass(slots=True)
class _InFlight:
    launch: Launch
    started_at: float
    token_owners: list[int]  # request ids, in the order of `tokens`
    tokens: torch.Tensor | None  # [N] sampled tokens (host; pinned on CUDA)
    cpu_elapsed_s: float | None = None
    events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None  # (start, end) on CUDA
    keepalive: list = field(default_factory=list)  # tensors another stream made, held until done
    logprobs: tuple | None = None  # (chosen [N], top ids [N, k], top logprobs [N, k]) when a row asked for them


class Engine:
    def __init__(self, model: DecoderModel, kv_pool: KVPool, kv_cache: KVCache, device: torch.device | str,
                 partitions: PartitionManager | None = None, seed: int = 0, temperature: float = 0.0,
                 use_cuda_graphs: bool = False) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if kv_pool.block_size != kv_cache.block_size or kv_pool.num_blocks < kv_cache.num_blocks:
            raise ValueError("KV pool and KV cache disagree on block size or number of blocks")
        self.model, self.kv_pool, self.kv_cache = model, kv_pool, kv_cache
        self.device = torch.device(device)
        self.partitions = partitions or PartitionManager.single_lane(self.device, "no partitions given")
        self.temperature = temperature
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self.decode_graphs: DecodeGraphs | None = None
        self._seqs: dict[int, _Seq] = {}
        self._in_flight: list[_InFlight] = []
        self._busy: set[int] = set()  # requests inside an unfinished launch

    # ---- requests ------------------------------------------------------------------------------------
    def add_request(self, request_id: int, prompt_token_ids: Sequence[int],
                    sampling: SamplingParams | None = None) -> None:
        if request_id in self._seqs:
            raise ValueError(f"request {request_id} already added")
        if not prompt_token_ids:
            raise ValueError(f"request {request_id}: empty prompt")
        self._seqs[request_id] = _Seq(list(prompt_token_ids), len(prompt_token_ids), sampling=sampling)

    def output_tokens(self, request_id: int) -> list[int]:
        seq = self._seqs[request_id]
        return seq.token_ids[seq.prompt_len:]

    def output_logprobs(self, request_id: int) -> list[tuple[float, list[tuple[int, float]]]]:
        """(chosen token's logprob, top alternatives) per output token, for requests that asked for them."""
        return self._seqs[request_id].logprobs

    def free(self, request_id: int) -> None:
        """Forget a request (its KV blocks are the scheduler's to free in the KVCache)."""
        if request_id in self._busy:
            raise ValueError(f"request {request_id} is inside a running launch")
        del self._seqs[request_id]

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def capture_decode_graphs(self, max_batch: int = 256, max_context_len: int | None = None) -> None:
        """Capture one decode graph per (decode partition, batch-size bucket); no-op off CUDA."""
        if not self.use_cuda_graphs:
            return
        max_len = max_context_len or min(self.kv_cache.num_blocks * self.kv_cache.block_size,
                                         self.model.config.max_position_embeddings)
        self.decode_graphs = DecodeGraphs(self.model, self.kv_pool, max_batch, max_len)
        for num_sms, stream in self.partitions.decode_streams().items():
            self.decode_graphs.capture(num_sms, stream)

    # ---- launches ------------------------------------------------------------------------------------
    def start(self, launch: Launch, now: float) -> None:
        """Enqueue `launch` (CUDA) or run it (CPU). Does not wait for other lanes."""
        ids = list(launch.decode_ids) + [c.request_id for c in launch.prefill]
        if len(set(ids)) != len(ids) or self._busy.intersection(ids):
            raise ValueError(f"launch repeats a request or reuses one still running: {ids}")
        if any(f.launch.lane == launch.lane for f in self._in_flight):
            raise ValueError(f"the {launch.lane} lane is busy: one launch per lane at a time")
        if launch.num_steps != 1:  # the executor runs one iteration per launch (max_decode_steps = 1)
            raise ValueError(f"the executor runs one step per launch, got num_steps={launch.num_steps}")
        if launch.prefill and launch.num_layers != self.model.num_layers:
            raise ValueError(f"launch for {launch.num_layers} layers, model has {self.model.num_layers}")
        stream = self.partitions.stream_for(launch.lane, launch.num_sms)
        flight = _InFlight(launch, now, [], None)
        if stream is None:
            t0 = time.perf_counter()
            self._run(launch, flight, None)
            flight.cpu_elapsed_s = time.perf_counter() - t0
        else:
            with torch.cuda.stream(stream):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                self._run(launch, flight, stream)
                end.record()
            flight.events = (begin, end)
        self._busy.update(ids)
        self._in_flight.append(flight)

    def poll(self, now: float) -> list[tuple[Launch, float]]:
        """Finished launches with their finish times (<= now); their tokens become visible. Never blocks."""
        done, still = [], []
        for flight in self._in_flight:
            (done if flight.events is None or flight.events[1].query() else still).append(flight)
        self._in_flight = still
        out = []
        for flight in done:
            if flight.tokens is not None:
                for rid, token in zip(flight.token_owners, flight.tokens.tolist()):
                    self._seqs[rid].token_ids.append(token)
                self._record_logprobs(flight)
            self._busy.difference_update(flight.launch.decode_ids)
            self._busy.difference_update(c.request_id for c in flight.launch.prefill)
            elapsed_s = flight.cpu_elapsed_s
            if flight.events is not None:
                elapsed_s = flight.events[0].elapsed_time(flight.events[1]) / 1000.0
            out.append((flight.launch, max(flight.started_at, min(now, flight.started_at + elapsed_s))))
        return out

    def _run(self, launch: Launch, flight: _InFlight, stream: torch.cuda.Stream | None) -> None:
        all_layers = (launch.layer_start, launch.layer_end) == (0, self.model.num_layers)
        one_batch = bool(launch.decode_ids and launch.prefill) and all_layers  # mixed: decode rides along
        logits, owners = [], []
        if launch.decode_ids and not one_batch:
            logits.append(self._decode(launch))
            owners.extend(launch.decode_ids)
        if launch.prefill:
            decode_ids = launch.decode_ids if one_batch else ()
            rows, row_owners = self._prefill(launch, decode_ids, flight, stream)
            if rows is not None:
                logits.append(rows)
                owners.extend(row_owners)
        if logits:
            tokens, flight.logprobs = self._sample(torch.cat(logits), owners)
            if stream is not None:
                host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
                tokens = host.copy_(tokens, non_blocking=True)  # valid once the end event fires
            flight.tokens, flight.token_owners = tokens, owners

    def _decode_slices(self, decode_ids: Sequence[int]) -> tuple[list[int], list[SeqSlice]]:
        tokens, slices = [], []
        for rid in decode_ids:
            seq = self._seqs[rid]
            if seq.num_computed != len(seq.token_ids) - 1 or seq.num_computed < seq.prompt_len:
                raise ValueError(f"request {rid} has no sampled token to decode from (prefill unfinished?)")
            tokens.append(seq.token_ids[-1])
            slices.append(SeqSlice(seq.num_computed, 1, self.kv_cache.block_table(rid)))
            seq.num_computed += 1
        return tokens, slices

    def _decode(self, launch: Launch) -> torch.Tensor:
        """One decode step over all layers; [B, vocab] logits."""
        tokens, slices = self._decode_slices(launch.decode_ids)
        graphs = self.decode_graphs
        key = launch.num_sms if self.partitions.is_partitioned else self.partitions.num_sms  # graphs per partition
        if graphs is not None and graphs.can_run(key, len(tokens)):
            return graphs.run(key, tokens, slices)
        meta = build_attn_metadata(slices, self.kv_pool.block_size, self.device, self._num_splits(slices, launch))
        return self.model.forward(self._tensor(tokens), meta, self.kv_pool)

    def _prefill(self, launch: Launch, decode_ids: Sequence[int], flight: _InFlight,
                 stream: torch.cuda.Stream | None) -> tuple[torch.Tensor | None, list[int]]:
        """Prefill layer group(s), with `decode_ids` riding along in the same batch when given."""
        tokens, slices = self._decode_slices(decode_ids)
        hiddens = [self.model.embed(self._tensor(tokens))] if tokens else []
        for chunk in launch.prefill:
            slices.append(SeqSlice(chunk.start_len, chunk.num_new, self.kv_cache.block_table(chunk.request_id)))
            hiddens.append(self._chunk_input(chunk, launch.layer_start, flight, stream))
        meta = build_attn_metadata(slices, self.kv_pool.block_size, self.device, self._num_splits(slices, launch))
        hidden = self.model.run_layers(torch.cat(hiddens), launch.layer_start, launch.layer_end, meta, self.kv_pool)
        parts = hidden[len(tokens):].split([c.num_new for c in launch.prefill])
        rows, owners = list(range(len(tokens))), list(decode_ids)
        ready = self._event(stream)
        offset = len(tokens)
        for chunk, part in zip(launch.prefill, parts):
            seq = self._seqs[chunk.request_id]
            offset += chunk.num_new
            if not launch.prefill_completes:
                seq.pending = _Pending(chunk.start_len, chunk.num_new, launch.layer_end, part, ready)
                continue
            seq.pending, seq.num_computed = None, chunk.end_len
            if chunk.end_len == seq.prompt_len:  # the prompt's last chunk emits the first output token
                rows.append(offset - 1)
                owners.append(chunk.request_id)
        if not rows:
            return None, []
        return self.model.logits(hidden[self._tensor(rows)]), owners

    def _chunk_input(self, chunk: PrefillChunk, layer_start: int, flight: _InFlight,
                     stream: torch.cuda.Stream | None) -> torch.Tensor:
        """[num_new, hidden]: embeddings for the first layer group, else the kept hidden state."""
        seq = self._seqs[chunk.request_id]
        if chunk.end_len > seq.prompt_len:
            raise ValueError(f"request {chunk.request_id}: chunk ends at {chunk.end_len} > prompt {seq.prompt_len}")
        if layer_start == 0:  # a chunk still between layer groups is dropped: restarting it recomputes its KV
            seq.pending = None
            return self.model.embed(self._tensor(seq.token_ids[chunk.start_len:chunk.end_len]))
        p = seq.pending
        if p is None or (p.start_len, p.num_new, p.next_layer) != (chunk.start_len, chunk.num_new, layer_start):
            raise ValueError(f"request {chunk.request_id}: no chunk [{chunk.start_len}, {chunk.end_len}) "
                             f"waiting at layer {layer_start}")
        if stream is not None and p.ready is not None:
            stream.wait_event(p.ready)  # made on another stream: order it without blocking the host
            flight.keepalive.append(p.hidden)
        return p.hidden

    def _num_splits(self, slices: Sequence[SeqSlice], launch: Launch) -> int:
        if self.device.type != "cuda":
            return 1
        max_len = max(s.start_len + s.num_new for s in slices)
        return choose_num_splits(len(slices), self.model.num_kv_heads, max_len, launch.num_sms)

    def _sample(self, logits: torch.Tensor, owners: Sequence[int]) -> SampleOutput:
        """logits: [N, vocab] fp32 -> [N] int64 tokens (greedy at temperature 0), with each row's request's
        SamplingParams (executor/sampling.py) where it has them."""
        seqs = [self._seqs[rid] for rid in owners]
        if all(s.sampling is None for s in seqs):
            if self.temperature == 0:
                return SampleOutput(logits.argmax(dim=-1), None)
            probs = torch.softmax(logits / self.temperature, dim=-1)
            return SampleOutput(torch.multinomial(probs, 1, generator=self.generator).squeeze(-1), None)
        default = SamplingParams(temperature=self.temperature)
        # NOTE: after a recompute preemption prompt_len includes earlier output: penalties see it as prompt
        return sample(logits, [s.sampling or default for s in seqs], [s.token_ids for s in seqs],
                      [s.prompt_len for s in seqs], self.generator)

    def _record_logprobs(self, flight: _InFlight) -> None:
        if flight.logprobs is None:
            return
        chosen, top_ids, top_lps = (t.tolist() for t in flight.logprobs)
        for i, rid in enumerate(flight.token_owners):
            seq = self._seqs[rid]
            if seq.sampling is not None and seq.sampling.num_logprobs is not None:
                k = seq.sampling.num_logprobs
                seq.logprobs.append((chosen[i], list(zip(top_ids[i][:k], top_lps[i][:k]))))

    def _tensor(self, values: list[int]) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.int64)
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def _event(self, stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event
