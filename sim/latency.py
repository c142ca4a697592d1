"""Solo-run latency of prefill, decode and mixed iterations on an SM partition (no co-running lane).

Sources: `sim.measured_latency.MeasuredLatency` (measured kernel tables, the default), `RooflineLatency`
(analytic), `PdmuxFitLatency` (the paper authors' public fits) and `sim.profile_table.ProfileTableLatency`
(our calibration samples). Contention with
the other lane is applied on top by `sim.contention`. Pure numpy/stdlib: the policy's estimator samples these.
"""
from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple, Protocol, Sequence

from sim.hardware import GpuSpec
from sim.model_spec import ModelSpec, causal_attention_pairs
from yoda.backend import Launch

LAYER_GROUP_LAUNCH_S = 20e-6  # host launch + pipeline drain per prefill layer-group launch (DESIGN 4.2: <= 1.5%)
MIN_PREDICTION_S = 1e-4  # floor for fitted predictions: noisy fits can go negative outside their data


class LatencySource(Protocol):
    """Solo duration, in seconds, of one iteration over all layers on `num_sms` SMs. Pure functions."""

    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        """Prefill batch: chunk i has new_lens[i] new tokens after reused_lens[i] cached ones; LM head incl."""

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        """One decode step of `batch` requests attending `kv_len` KV tokens in total."""

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        """One fused chunked-prefill iteration: prefill chunks and `batch` decode tokens in one batch."""


def launch_solo_s(source: LatencySource, launch: Launch, num_layers: int | None = None) -> float:
    """Solo duration of a backend Launch. A prefill-only launch of layers [start, end) takes that fraction
    of the whole prefill plus LAYER_GROUP_LAUNCH_S; a launch with both decode and prefill is a mixed
    iteration over all layers. The reused length of a chunk is its start_len."""
    new_lens = [c.num_new for c in launch.prefill]
    reused_lens = [c.start_len for c in launch.prefill]
    batch = len(launch.decode_ids)
    if not launch.prefill:
        return source.decode_s(batch, launch.decode_kv_len, launch.num_sms)
    if batch:
        return source.mixed_s(new_lens, reused_lens, batch, launch.decode_kv_len, launch.num_sms)
    depth = launch.num_layers or num_layers
    if not depth:
        raise ValueError("prefill launch without num_layers")
    fraction = (launch.layer_end - launch.layer_start) / depth
    return source.prefill_s(new_lens, reused_lens, launch.num_sms) * fraction + LAYER_GROUP_LAUNCH_S


# ---- (a) roofline ------------------------------------------------------------------------------------
class Work(NamedTuple):
    """What one iteration does on one GPU, all layers."""

    gemm_flops: float  # linear layers + LM head
    attention_flops: float  # prefill attention (new tokens over their prefix)
    weight_bytes: float  # weights read once per iteration
    activation_bytes: float
    kv_bytes: float  # KV read by prefill attention + KV written for the new tokens
    num_tokens: int  # tokens through the layers (all-reduce payload)
    decode_attention_flops: float = 0.0
    decode_kv_bytes: float = 0.0  # KV read by the decode batch's attention


@dataclass(frozen=True)
class RooflineLatency:
    """time = sum over {GEMMs, attention} of max(FLOPs / usable FLOP/s, bytes / usable bandwidth)
    + tensor-parallel all-reduces + fixed overheads. Usable FLOP/s = peak * mfu * compute_share(sms);
    usable bandwidth = HBM * mbu * bandwidth_share(sms) (saturating in SMs, see GpuSpec).

    Efficiencies are typical H100 numbers: large bf16 GEMMs reach ~65% of dense peak, FlashAttention-style
    causal prefill ~45%, decode kernels ~80% of HBM bandwidth. NCCL's SM use is ignored.
    """

    # decode time is exactly linear in the batch's KV length: the attention kernel's bound side does not
    # depend on it (both its FLOPs and its bytes are proportional), so a multi-step run's step times are
    # an arithmetic progression (sim.gpu_instance)
    decode_linear_in_kv = True

    model: ModelSpec
    gpu: GpuSpec
    mfu: float = 0.65
    gemm_half_tokens: int = 32  # tokens at which GEMMs reach half of `mfu` (M-dimension tile/wave effects)
    attention_mfu: float = 0.45
    mbu: float = 0.80
    step_overhead_s: float = 3e-4  # per iteration: sampling, metadata copies, graph/launch latency
    layer_overhead_s: float = 1e-5  # per layer: kernel tails and launch gaps
    allreduce_latency_s: float = 1.5e-5  # per all-reduce (two per layer when tp > 1)

    def __post_init__(self) -> None:
        m = self.model  # per-call constants, computed once (this runs for every simulated launch)
        object.__setattr__(self, "_consts", (
            m.num_layers * m.linear_flops_per_token_layer, m.lm_head_flops_per_token,
            m.num_layers * m.attention_flops_per_pair, m.num_layers * m.layer_weight_bytes + m.lm_head_bytes,
            m.num_layers * m.activation_bytes_per_token_layer, m.kv_bytes_per_token))
        object.__setattr__(self, "_rates", {})  # num_sms -> (usable FLOP/s, usable bytes/s)
        object.__setattr__(self, "_decode_lines", {})  # (batch, num_sms) -> (seconds at no KV, seconds per KV token)

    def work(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int) -> Work:
        linear, lm_head, attn_pair, weights, activations, kv_per_token = self._consts  # type: ignore[attr-defined]
        if new_lens:
            num_new, num_reused = sum(new_lens), sum(reused_lens)
            pairs = sum(causal_attention_pairs(n, r) for n, r in zip(new_lens, reused_lens))
        else:
            num_new = num_reused = pairs = 0
        num_tokens = num_new + batch
        num_seqs = len(new_lens) + batch  # rows that reach the LM head
        # positional, in Work's field order (this runs for every simulated launch)
        return Work(linear * num_tokens + lm_head * num_seqs,  # gemm_flops
                    attn_pair * pairs,  # attention_flops (all layers)
                    weights,
                    activations * num_tokens,
                    kv_per_token * (num_reused + 2 * num_new + batch),  # kv_bytes: read prefix, write new
                    num_tokens,
                    attn_pair * kv_len,  # decode_attention_flops
                    kv_per_token * kv_len)  # decode_kv_bytes

    def gemm_efficiency(self, num_tokens: int) -> float:
        """Achieved share of peak for the linear layers: small M leaves tiles and waves partly idle."""
        return self.mfu * num_tokens / (num_tokens + self.gemm_half_tokens)

    def compute_memory_s(self, work: Work, num_sms: int) -> tuple[float, float, float, float]:
        """(GEMM compute, GEMM memory, attention compute, attention memory) seconds on `num_sms` SMs.
        Attention sums the prefill and decode kernels' bound times (they run one after the other)."""
        flops, bandwidth = self._rates_for(num_sms)
        gemm_c = work.gemm_flops / (flops * self.gemm_efficiency(max(work.num_tokens, 1)))
        p_c, p_m = work.attention_flops / (flops * self.attention_mfu), work.kv_bytes / bandwidth
        d_c, d_m = work.decode_attention_flops / (flops * self.attention_mfu), work.decode_kv_bytes / bandwidth
        # report the dominant side of each kernel so max(c, m) of the pair is the sum of both kernels' times
        attn_c = (p_c if p_c >= p_m else 0.0) + (d_c if d_c >= d_m else 0.0)
        attn_m = (p_m if p_m > p_c else 0.0) + (d_m if d_m > d_c else 0.0)
        return (gemm_c, (work.weight_bytes + work.activation_bytes) / bandwidth, attn_c, attn_m)

    def _rates_for(self, num_sms: int) -> tuple[float, float]:
        """(usable FLOP/s, usable HBM bytes/s) on `num_sms` SMs, memoised."""
        rates = self._rates.get(num_sms)  # type: ignore[attr-defined]
        if rates is None:
            rates = self._rates[num_sms] = (self.gpu.peak_flops * self.gpu.compute_share(num_sms),  # type: ignore[attr-defined]
                                            self.gpu.hbm_bytes_per_s * self.mbu * self.gpu.bandwidth_share(num_sms))
        return rates

    def _overhead_s(self, num_tokens: int) -> float:
        m = self.model
        overhead_s = self.step_overhead_s + m.num_layers * self.layer_overhead_s
        if m.tp > 1:  # ring all-reduce after attention and after the MLP
            payload = num_tokens * m.hidden * m.dtype_bytes * 2 * (m.tp - 1) / m.tp
            overhead_s += 2 * m.num_layers * (self.allreduce_latency_s + payload / self.gpu.nvlink_bytes_per_s)
        return overhead_s

    def time_s(self, work: Work, num_sms: int) -> float:
        gemm_c, gemm_m, attn_c, attn_m = self.compute_memory_s(work, num_sms)
        return max(gemm_c, gemm_m) + attn_c + attn_m + self._overhead_s(work.num_tokens)

    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        return self.time_s(self.work(new_lens, reused_lens, 0, 0), num_sms)

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        # exactly linear in kv_len (decode_linear_in_kv): two roofline evaluations per (batch, SMs), then a
        # line (the simulator asks for every step of every decode run)
        line = self._decode_lines.get((batch, num_sms))  # type: ignore[attr-defined]
        if line is None:
            at_zero = self.time_s(self.work((), (), batch, 0), num_sms)
            probe = 1 << 20
            line = (at_zero, (self.time_s(self.work((), (), batch, probe), num_sms) - at_zero) / probe)
            self._decode_lines[(batch, num_sms)] = line  # type: ignore[attr-defined]
        return line[0] + line[1] * kv_len

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        return self.time_s(self.work(new_lens, reused_lens, batch, kv_len), num_sms)

    def chunk_step_s(self, num_new: int, start_len: int, batch: int, kv_len: int, num_sms: int
                     ) -> Callable[[int], float]:
        """Step j of a multi-step chunked launch with `batch` > 0 decode tokens: mixed_s([num_new],
        [start_len + j * num_new], batch, kv_len + j * batch, num_sms), the same arithmetic with what does
        not change between steps (the GEMMs, the rates, the overheads) computed once."""
        linear, lm_head, attn_pair, weights, activations, kv_per_token = self._consts  # type: ignore[attr-defined]
        flops, bandwidth = self._rates_for(num_sms)
        n, num_tokens = num_new, num_new + batch
        gemm_c = (linear * num_tokens + lm_head * (1 + batch)) / (flops * self.gemm_efficiency(max(num_tokens, 1)))
        gemm = max(gemm_c, (weights + activations * num_tokens) / bandwidth)
        overhead_s, attention_rate, triangle = self._overhead_s(num_tokens), flops * self.attention_mfu, n * (n + 1) / 2

        def step_s(j: int) -> float:  # work() and compute_memory_s(), inlined
            r, kv = start_len + j * n, kv_len + j * batch
            p_c = attn_pair * (n * r + triangle) / attention_rate  # causal_attention_pairs(n, r)
            p_m = kv_per_token * (r + 2 * n + batch) / bandwidth
            d_c, d_m = attn_pair * kv / attention_rate, kv_per_token * kv / bandwidth
            attn_c = (p_c if p_c >= p_m else 0.0) + (d_c if d_c >= d_m else 0.0)
            attn_m = (p_m if p_m > p_c else 0.0) + (d_m if d_m > d_c else 0.0)
            return gemm + attn_c + attn_m + overhead_s
        return step_s


# ---- (b) the paper authors' public fits ---------------------------------------------------------------
FIT_FILE = "pdmux_predictor_fits.json"
_REPO_ROOT = Path(__file__).resolve().parents[1]
FIT_PATHS = (_REPO_ROOT.parent / "shared" / "profiles" / FIT_FILE, _REPO_ROOT / "calibration" / "profiles" / FIT_FILE)


@lru_cache(maxsize=8)
def _load_fits(path: str) -> dict:
    return json.loads(Path(path).read_text())


def default_fit_path() -> Path:
    for path in FIT_PATHS:
        if path.exists():
            return path
    raise FileNotFoundError(f"{FIT_FILE} not found in {[str(p) for p in FIT_PATHS]}")


def fit_table_for(gpu: GpuSpec, model: ModelSpec | None = None) -> str:
    """H800 table for Hopper GPUs; on A100 the 8B table for models under ~20B parameters, else the 70B one."""
    if gpu.name.lower().startswith("a100"):
        return "A100_8B" if model is not None and model.params < 20e9 else "A100"
    return "H800"


class _SmTable:
    """Coefficient rows keyed by SM count; rows are interpolated linearly in SMs and clamped outside."""

    def __init__(self, rows: dict[str, list[float]]) -> None:
        keyed = sorted((int(k), v) for k, v in rows.items())
        self.sms = [k for k, _ in keyed]
        self.rows = [v for _, v in keyed]

    def coefs(self, num_sms: int) -> list[float]:
        i = bisect_right(self.sms, num_sms)
        if i == 0:
            return self.rows[0]
        if i == len(self.sms):
            return self.rows[-1]
        lo, hi = self.sms[i - 1], self.sms[i]
        w = (num_sms - lo) / (hi - lo)
        return [a + w * (b - a) for a, b in zip(self.rows[i - 1], self.rows[i])]


def _regime_limit(name: str) -> float:
    """Upper token limit of a regime name: seqlen_lt_2k -> 2048, seqlen_bt_2k_8k -> 8192, *_gt_* -> inf."""
    if "_gt_" in name:
        return float("inf")
    return float(name.rsplit("_", 1)[1].rstrip("k")) * 1024


class PdmuxFitLatency:
    """Solo latency from the PD-multiplexing authors' fits (ms; see the JSON's "what" and "caveats").

    prefill_ms = a*S2 + b*SP + c*T + d, in units of 1K tokens, with S2 = Sum(n_i^2), SP = Sum(n_i*r_i),
    T = Sum(n_i): the paper's per-request form, identical to upstream's totals for one request. T < 512 is
    priced as one 512-token request (upstream clamps T >= 512). Regime chosen by T (<=2K, <=8K, >8K).
    decode_ms = a*K/1024 + b*B + c, regime by K (128K split; 64K on RTX3090). Upstream squares K/1024 on
    H800, which looks like a slip; `kv_exponent=2` reproduces it.

    NOTE: the model behind each table is unknown (A100 likely Llama-3-70B TP=8, A100_8B an 8B Llama, H800
    unknown) and the fits are noisy (non-monotone in SMs, some negative coefficients): predictions are
    floored at MIN_PREDICTION_S. Use as realistic SM-scaling shapes; RooflineLatency is the default.
    """

    MIN_FIT_TOKENS = 512  # the fits' data start here; smaller batches are priced as this many tokens

    def __init__(self, table_name: str = "H800", model: ModelSpec | None = None, path: str | Path | None = None,
                 kv_exponent: float = 1.0) -> None:
        fits = _load_fits(str(path or default_fit_path()))["gpus"]
        if table_name not in fits:
            raise KeyError(f"unknown fit table {table_name!r}; tables: {', '.join(fits)}")
        table = fits[table_name]
        self.table_name, self.model, self.kv_exponent = table_name, model, kv_exponent
        self.num_sms: int = table["sms"]
        self.prefill = sorted(((_regime_limit(k), _SmTable(v)) for k, v in table["prefill"].items()),
                              key=lambda x: x[0])
        self.decode = sorted(((_regime_limit(k), _SmTable(v)) for k, v in table["decode"].items()),
                             key=lambda x: x[0])

    def check_chunk_tokens(self, chunk_tokens: int | None) -> None:
        """Refuse a comparison whose prefill chunks are smaller than the fits' data (issue 15): each is priced
        as MIN_FIT_TOKENS tokens, so a small-chunk policy cannot meet a tight TBT target by construction."""
        if chunk_tokens is not None and chunk_tokens < self.MIN_FIT_TOKENS:
            floor_ms = self.prefill_s([self.MIN_FIT_TOKENS], [0], self.num_sms) * 1e3
            raise ValueError(
                f"--latency pdmux prices any batch under {self.MIN_FIT_TOKENS} tokens as {self.MIN_FIT_TOKENS} "
                f"({floor_ms:.0f} ms on {self.table_name}): its fits hold no smaller batches, so chunks of "
                f"{chunk_tokens} tokens cannot be compared under it; use --latency measured or roofline")

    @classmethod
    def for_gpu(cls, gpu: GpuSpec, model: ModelSpec | None = None, path: str | Path | None = None) -> PdmuxFitLatency:
        return cls(fit_table_for(gpu, model), model, path)

    @staticmethod
    def _pick(regimes: list[tuple[float, _SmTable]], value: float) -> _SmTable:
        return next(t for limit, t in regimes if value <= limit)

    def _prefill_ms(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        total = sum(new_lens)
        if total < 512:  # upstream clamp; the reuse term keeps the token-weighted mean prefix
            mean_reused = sum(n * r for n, r in zip(new_lens, reused_lens)) / total if total else 0.0
            new_lens, reused_lens, total = (512,), (mean_reused,), 512
        a, b, c, d = self._pick(self.prefill, total).coefs(num_sms)
        s2 = sum(n * n for n in new_lens) / 1024**2
        sp = sum(n * r for n, r in zip(new_lens, reused_lens)) / 1024**2
        return a * s2 + b * sp + c * total / 1024 + d

    def _decode_kv_ms(self, kv_len: int, num_sms: int) -> tuple[float, list[float]]:
        coefs = self._pick(self.decode, kv_len).coefs(num_sms)
        return coefs[0] * (kv_len / 1024) ** self.kv_exponent, coefs

    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        return max(self._prefill_ms(new_lens, reused_lens, num_sms) / 1e3, MIN_PREDICTION_S)

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        kv_ms, (_, b, c) = self._decode_kv_ms(kv_len, num_sms)
        return max((kv_ms + b * batch + c) / 1e3, MIN_PREDICTION_S)

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        """Prefill formula over the chunks plus `batch` one-token rows, plus the decode fit's KV term."""
        if not new_lens:
            return self.decode_s(batch, kv_len, num_sms)
        prefill_ms = self._prefill_ms([*new_lens, *[1] * batch], [*reused_lens, *[0] * batch], num_sms)
        kv_ms = self._decode_kv_ms(kv_len, num_sms)[0] if batch else 0.0
        return max((prefill_ms + kv_ms) / 1e3, MIN_PREDICTION_S)
