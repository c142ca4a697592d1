"""Seeded synthetic workloads shaped after public datasets, with prefix-chained 16-token hash ids.

    from traces import sharegpt_like
    requests = sharegpt_like(num_sessions=200, session_rate_rps=1.0, rng=0)

Lengths are lognormal around a median, clipped to [lo, hi] (about 2.5% of draws land on each bound).
Hash ids name 16-token blocks and are prefix-chained: two blocks share an id only if everything up to
and including them is the same, so `KVCache` reuse follows the intended sharing exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from traces.loaders import requests_from_rows
from traces.replay import Rng, gamma_arrivals
from yoda.request import Request

SYNTHETIC_HASH_BLOCK_SIZE = 16


class LengthDist(NamedTuple):
    """Lognormal token length with the given median; [lo, hi] hold ~95% of the mass before clipping."""

    median: float
    lo: int
    hi: int

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Any:
        sigma = max(math.log(self.hi / self.median), math.log(self.median / self.lo)) / 1.96
        draws = np.clip(np.rint(rng.lognormal(math.log(self.median), sigma, size)), self.lo, self.hi)
        return draws.astype(int) if size is not None else int(draws)


# ShareGPT: a turn's new user message and its answer (the prompt grows with the conversation)
CHAT_MESSAGE = LengthDist(450, 200, 1000)
CHAT_OUTPUT = LengthDist(280, 200, 400)
# LooGLE: a long document plus a short question; short answers
DOC = LengthDist(17_000, 10_000, 29_900)
DOC_QUESTION = LengthDist(30, 10, 100)
DOC_OUTPUT = LengthDist(30, 10, 100)
# OpenThoughts: short problems, long reasoning
REASONING_PROMPT = LengthDist(320, 100, 1000)
REASONING_OUTPUT = LengthDist(5_600, 2_000, 16_000)
# shared system prompt workloads: user message and answer after one of a few system prompts
SYSTEM_PROMPT_LEN = (1024, 4096)
USER_MESSAGE = LengthDist(150, 20, 1000)
USER_OUTPUT = LengthDist(200, 50, 800)


class HashIds:
    """Hands out prefix-chained block ids: fresh ids for new content, kept ids for a shared prefix."""

    def __init__(self, block_size: int = SYNTHETIC_HASH_BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.num_ids = 0

    def fresh(self, num_blocks: int) -> tuple[int, ...]:
        ids = tuple(range(self.num_ids, self.num_ids + num_blocks))
        self.num_ids += num_blocks
        return ids

    def chain(self, prompt_len: int, prefix: tuple[int, ...] = (), shared_len: int = 0) -> tuple[int, ...]:
        """Ids for a prompt of `prompt_len` tokens whose first `shared_len` tokens are those of the prompt
        that `prefix` names: that prompt's full blocks inside the shared part keep their ids."""
        keep = prefix[: shared_len // self.block_size]
        return keep + self.fresh(-(-prompt_len // self.block_size) - len(keep))


def _row(arrival_at: float, prompt_len: int, output_len: int, hashes: tuple[int, ...],
         session_id: str | None = None, turn: int = 1, think_time_s: float = 0.0) -> dict[str, Any]:
    return dict(arrival_at=float(arrival_at), prompt_len=int(prompt_len), output_len=int(output_len),
                session_id=session_id, turn=turn, block_hashes=hashes,
                hash_block_size=SYNTHETIC_HASH_BLOCK_SIZE, think_time_s=float(think_time_s))


def sharegpt_like(num_sessions: int, session_rate_rps: float, rng: Rng = 0, mean_turns: float = 4.0,
                  max_turns: int = 16, think_time_s: float = 20.0) -> list[Request]:
    """Multi-turn chat: sessions start at Poisson times; each has a geometric number of turns (mean
    `mean_turns`); turn k's prompt = turn k-1's prompt + its output + a new user message, so it reuses
    turn k-1's prompt blocks. Turns are exponential(think_time_s) apart; think_time_s holds that gap."""
    gen, ids, rows = np.random.default_rng(rng), HashIds(), []
    starts = gamma_arrivals(num_sessions, session_rate_rps, 1.0, gen)
    for s, at in enumerate(starts):
        num_turns = min(int(gen.geometric(1.0 / mean_turns)), max_turns)
        prompt_len, gap_s = CHAT_MESSAGE.sample(gen), 0.0
        hashes = ids.chain(prompt_len)
        for turn in range(1, num_turns + 1):
            output_len = CHAT_OUTPUT.sample(gen)
            rows.append(_row(at, prompt_len, output_len, hashes, f"chat{s}", turn, gap_s))
            gap_s = float(gen.exponential(think_time_s))
            at += gap_s
            next_len = prompt_len + output_len + CHAT_MESSAGE.sample(gen)
            hashes, prompt_len = ids.chain(next_len, hashes, prompt_len), next_len
    return requests_from_rows(rows)


def loogle_like(num_docs: int, doc_rate_rps: float, rng: Rng = 0, questions_per_doc: tuple[int, int] = (2, 6),
                think_time_s: float = 10.0) -> list[Request]:
    """Long-document QA: documents arrive at Poisson times; each gets several questions (uniform count
    in `questions_per_doc`), exponential(think_time_s) apart. Prompt = document + question, so the
    questions of one document share its prefix; they form session "doc<k>"."""
    gen, ids, rows = np.random.default_rng(rng), HashIds(), []
    lo, hi = questions_per_doc
    for d, at in enumerate(gamma_arrivals(num_docs, doc_rate_rps, 1.0, gen)):
        doc_len, gap_s = DOC.sample(gen), 0.0
        doc_hashes: tuple[int, ...] = ()
        for turn in range(1, int(gen.integers(lo, hi + 1)) + 1):
            prompt_len = doc_len + DOC_QUESTION.sample(gen)
            hashes = ids.chain(prompt_len, doc_hashes, doc_len)
            doc_hashes = doc_hashes or hashes  # the first question names the document's blocks
            rows.append(_row(at, prompt_len, DOC_OUTPUT.sample(gen), hashes, f"doc{d}", turn, gap_s))
            gap_s = float(gen.exponential(think_time_s))
            at += gap_s
    return requests_from_rows(rows)


def openthoughts_like(num_requests: int, rate_rps: float, rng: Rng = 0) -> list[Request]:
    """Reasoning: short prompts (100-1000 tokens), long outputs (2K-16K), Poisson arrivals, no sharing."""
    gen, ids = np.random.default_rng(rng), HashIds()
    rows = []
    for at in gamma_arrivals(num_requests, rate_rps, 1.0, gen):
        prompt_len = REASONING_PROMPT.sample(gen)
        rows.append(_row(at, prompt_len, REASONING_OUTPUT.sample(gen), ids.chain(prompt_len)))
    return requests_from_rows(rows)


def shared_system_prompt(num_requests: int, rate_rps: float, rng: Rng = 0,
                         num_system_prompts: int = 4) -> list[Request]:
    """Single-turn requests at Poisson times, each = one of `num_system_prompts` system prompts
    (1K-4K tokens, chosen uniformly) + a user message; requests with the same system prompt share it."""
    gen, ids = np.random.default_rng(rng), HashIds()
    lo, hi = SYSTEM_PROMPT_LEN
    system_lens = gen.integers(lo, hi + 1, size=num_system_prompts)
    system_hashes = [ids.chain(int(n)) for n in system_lens]
    rows = []
    for at in gamma_arrivals(num_requests, rate_rps, 1.0, gen):
        k = int(gen.integers(num_system_prompts))
        prompt_len = int(system_lens[k]) + USER_MESSAGE.sample(gen)
        hashes = ids.chain(prompt_len, system_hashes[k], int(system_lens[k]))
        rows.append(_row(at, prompt_len, USER_OUTPUT.sample(gen), hashes))
    return requests_from_rows(rows)


GENERATORS: dict[str, Callable[..., list[Request]]] = {
    "sharegpt": sharegpt_like,
    "loogle": loogle_like,
    "openthoughts": openthoughts_like,
    "shared_system_prompt": shared_system_prompt,
}
