"""Per-request sampling: min-tokens, penalties, temperature, top-k, top-p, min-p, seeds, and the logprobs to
return.

    params = SamplingParams(temperature=0.8, top_p=0.9, seed=7, num_logprobs=2)
    out = sample(logits, [params], histories=[token_ids], prompt_lens=[prompt_len], generator=g)
    out.tokens            # [N] int64
    out.logprobs          # None, or (chosen [N], top_ids [N, k], top_logprobs [N, k]) of the raw model logprobs

Order (vLLM's): the stop ids banned before `min_tokens` output tokens (EOS and `stop_token_ids`: they cannot
be drawn, as vLLM's min-tokens processor and transformers' MinNewTokensLengthLogitsProcessor do), repetition,
frequency and presence penalties, then temperature, then the top-k, top-p and min-p filters, then a draw.
Temperature 0 is greedy (argmax after penalties).
A seeded row draws from a generator seeded with (seed, sequence length), so a request's text depends on its
seed alone: not on batch neighbours, arrival order or a recompute preemption. Unseeded rows share `generator`.
Returned logprobs are log-softmax of the logits before any penalty or filter (vLLM's default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

_SEED_STRIDE = 1_000_003  # (seed, length) -> one generator seed; lengths stay far below the stride


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # <= 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    num_logprobs: int | None = None  # None: no logprobs; k >= 0: the chosen token's and the k most likely
    min_tokens: int = 0  # before this many output tokens the ids below cannot be drawn
    min_tokens_stop_ids: tuple[int, ...] = ()  # EOS (unless ignored) and the request's stop_token_ids

    def __post_init__(self) -> None:
        checks = [(self.temperature >= 0, "temperature must be >= 0"), (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (self.num_logprobs is None or self.num_logprobs >= 0, "num_logprobs must be >= 0"),
                  (self.min_tokens >= 0, "min_tokens must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


GREEDY = SamplingParams()


class SampleOutput(NamedTuple):
    tokens: torch.Tensor  # [N] int64
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # chosen [N], top ids [N, k], top lps [N, k]


def apply_penalties(logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]],
                    prompt_lens: Sequence[int]) -> torch.Tensor:
    """logits [N, V] with each row's penalties applied (a new tensor). Repetition counts prompt and output
    tokens; frequency and presence count output tokens only (OpenAI's and vLLM's definitions)."""
    out = logits.clone()
    for i, (p, history, prompt_len) in enumerate(zip(params, histories, prompt_lens)):
        if not p.has_penalties:
            continue
        row = out[i]
        if p.repetition_penalty != 1.0 and len(history):
            seen = torch.tensor(sorted(set(history)), dtype=torch.int64, device=row.device)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        output = history[prompt_len:]
        if output and (p.frequency_penalty or p.presence_penalty):
            counts = torch.bincount(torch.tensor(list(output), dtype=torch.int64, device=row.device),
                                    minlength=row.shape[0]).to(row.dtype)
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    return out


def ban_stops_before_min_tokens(logits: torch.Tensor, params: Sequence[SamplingParams],
                                histories: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> torch.Tensor:
    """logits [N, V], with -inf at each row's `min_tokens_stop_ids` while it has fewer than `min_tokens`
    output tokens (a new tensor where a row changes; `logits` itself otherwise)."""
    rows = [i for i, p in enumerate(params)
            if p.min_tokens_stop_ids and len(histories[i]) - prompt_lens[i] < p.min_tokens]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        out[i, torch.tensor(params[i].min_tokens_stop_ids, dtype=torch.int64, device=out.device)] = float("-inf")
    return out


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """[N, V] probabilities after temperature, top-k, top-p and min-p (rows at temperature 0: one-hot argmax)."""
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
    probs = torch.softmax(logits / temps.clamp_min(1e-5)[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=logits.device)
    min_p = torch.tensor([p.min_p for p in params], dtype=logits.dtype, device=logits.device)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    in_top_k = rank < top_k[:, None]
    renormed = torch.where(in_top_k, sorted_probs, torch.zeros_like(sorted_probs))
    renormed = renormed / renormed.sum(dim=-1, keepdim=True)  # top-p counts mass within the top k (vLLM)
    before = renormed.cumsum(dim=-1) - renormed  # mass of the tokens ranked above
    keep = in_top_k & (before < top_p[:, None]) & (sorted_probs >= min_p[:, None] * sorted_probs[:, :1])
    keep[:, 0] = True  # the most likely token always survives
    kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    kept = kept / kept.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(probs).scatter_(-1, order, kept)
    greedy = temps == 0
    if bool(greedy.any()):
        one_hot = torch.zeros_like(probs).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        out = torch.where(greedy[:, None], one_hot, out)
    return out


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]],
           prompt_lens: Sequence[int], generator: torch.Generator | None = None) -> SampleOutput:
    """logits [N, V] fp32; histories[i]: row i's tokens so far (prompt then output). Does not modify logits."""
    if len(params) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {len(params)} sampling params")
    allowed = ban_stops_before_min_tokens(logits, params, histories, prompt_lens)
    penalised = apply_penalties(allowed, params, histories, prompt_lens) if any(p.has_penalties for p in params) \
        else allowed
    tokens = penalised.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if sampled:
        probs = filtered_probs(penalised[sampled], [params[i] for i in sampled])
        draws = _draw(probs, [params[i] for i in sampled], [len(histories[i]) for i in sampled], generator)
        tokens[torch.tensor(sampled, device=tokens.device)] = draws
    return SampleOutput(tokens, _logprobs(logits, tokens, params))


def _draw(probs: torch.Tensor, params: Sequence[SamplingParams], lengths: Sequence[int],
          generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: seeded rows from their own (seed, length) generator, the others from `generator`."""
    out = torch.empty(probs.shape[0], dtype=torch.int64, device=probs.device)
    shared = [i for i, p in enumerate(params) if p.seed is None]
    if shared:
        out[shared] = torch.multinomial(probs[shared], 1, generator=generator).squeeze(-1)
    for i, (p, length) in enumerate(zip(params, lengths)):
        if p.seed is not None:
            g = torch.Generator(device=probs.device).manual_seed((p.seed * _SEED_STRIDE + length) % (1 << 63))
            out[i] = torch.multinomial(probs[i], 1, generator=g)[0]
    return out


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: Sequence[SamplingParams]):
    wanted = [p.num_logprobs for p in params if p.num_logprobs is not None]
    if not wanted:
        return None
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    top_lps, top_ids = logprobs.topk(max(wanted), dim=-1) if max(wanted) else (logprobs[:, :0], tokens[:, None][:, :0])
    return chosen, top_ids, top_lps
