"""executor/sampling.py against transformers' logits processors (the torch reference) and a per-token loop."""
import torch
from hypothesis import given, settings, strategies as st
from transformers import (MinNewTokensLengthLogitsProcessor, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from executor.sampling import SamplingParams, apply_penalties, ban_stops_before_min_tokens, filtered_probs, sample

VOCAB = 64


def _reference_probs(logits: torch.Tensor, history: list[int], p: SamplingParams) -> torch.Tensor:
    """transformers' order: repetition penalty, temperature, top-k, top-p, min-p; then softmax."""
    ids, scores = torch.tensor([history]), logits[None].clone()
    if p.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_k > 0:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p < 1.0:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    if p.min_p > 0:
        scores = MinPLogitsWarper(p.min_p)(ids, scores)
    return torch.softmax(scores, dim=-1)[0]


params_st = st.builds(SamplingParams, temperature=st.floats(0.3, 2.0), top_p=st.floats(0.05, 1.0),
                      top_k=st.integers(0, VOCAB + 5), min_p=st.floats(0.0, 0.5),
                      repetition_penalty=st.floats(0.5, 3.0))


@settings(max_examples=60, deadline=None)
@given(params_st, st.integers(0, 10_000), st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20))
def test_filtered_probs_match_transformers(p, seed, history):
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    ours = filtered_probs(apply_penalties(logits[None], [p], [history], [len(history)]), [p])[0]
    ref = _reference_probs(logits, history, p)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = torch.zeros(2, 8)
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    history = [1, 1, 2, 3, 3, 3]  # prompt [1, 1], output [2, 3, 3, 3]
    out = apply_penalties(logits, [p, SamplingParams()], [history, history], [2, 2])
    expected = torch.zeros(8)
    for t in set(history[2:]):
        expected[t] -= 0.5 * history[2:].count(t) + 0.25
    assert torch.equal(out[0], expected) and torch.equal(out[1], logits[1]) and torch.equal(logits, torch.zeros(2, 8))


def test_seeded_rows_ignore_their_batch_and_greedy_rows_take_the_argmax():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    seeded = SamplingParams(temperature=1.0, seed=42)
    histories = [[5] * 7] * 4
    alone = sample(logits[2:3], [seeded], histories[:1], [3]).tokens
    batch = sample(logits, [SamplingParams(temperature=1.0), SamplingParams(), seeded, SamplingParams(temperature=2)],
                   histories, [3] * 4, torch.Generator().manual_seed(0)).tokens
    assert batch[2] == alone[0] and batch[1] == logits[1].argmax()
    draws = {int(sample(logits[:1], [SamplingParams(temperature=1.0, seed=s)], histories[:1], [3]).tokens[0])
             for s in range(40)}
    assert len(draws) > 5  # the seed matters


def test_logprobs_are_raw_model_logprobs_of_the_chosen_token():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(num_logprobs=3, repetition_penalty=2.0), SamplingParams(),
              SamplingParams(temperature=1.0, seed=3, num_logprobs=0)]
    out = sample(logits, params, [[1, 2]] * 3, [1] * 3)
    chosen, top_ids, top_lps = out.logprobs
    ref = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(chosen, ref.gather(-1, out.tokens[:, None])[:, 0])
    assert top_ids.shape == (3, 3) and torch.equal(top_ids, ref.topk(3).indices)
    assert torch.allclose(ref.exp().sum(-1), torch.ones(3))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(0, 8), st.integers(0, 8),
       st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=4, unique=True), st.floats(0.0, 2.0))
def test_min_tokens_bans_stop_ids_as_transformers_does(seed, prompt_len, num_output, min_tokens, stop_ids, temp):
    """Before min_tokens output tokens no stop id can be drawn (greedy or sampled); from then on the row is
    untouched. Logprobs stay those of the raw model."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, VOCAB, generator=g) * 3
    logits[:, stop_ids[0]] = 50.0  # a stop id is every row's argmax
    history = torch.randint(0, VOCAB, (prompt_len + num_output,), generator=g).tolist()
    p = SamplingParams(temperature=temp, seed=seed, num_logprobs=0, min_tokens=min_tokens,
                       min_tokens_stop_ids=tuple(stop_ids))
    ours = ban_stops_before_min_tokens(logits, [p] * 3, [history] * 3, [prompt_len] * 3)
    ref = MinNewTokensLengthLogitsProcessor(prompt_len, min_tokens, stop_ids)(
        torch.tensor([history] * 3), logits.clone())
    assert torch.equal(ours, ref)
    out = sample(logits, [p] * 3, [history] * 3, [prompt_len] * 3)
    if num_output < min_tokens:
        assert not set(out.tokens.tolist()) & set(stop_ids)
    else:  # untouched: the stop id's logit of 50 wins (others have probability below 1e-7 even at T=2)
        assert out.tokens.tolist() == [stop_ids[0]] * 3
    if temp == 0:  # greedy: the argmax of what is allowed
        assert out.tokens.tolist() == ref.argmax(dim=-1).tolist()
    raw = torch.log_softmax(logits, dim=-1).gather(-1, out.tokens[:, None])[:, 0]
    assert torch.allclose(out.logprobs[0], raw)
