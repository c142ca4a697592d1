"""No oracle by default: decisions use a predicted output length (session history, else a running mean);
the true length stays a named ablation, and a prediction miss that outgrows the cache is rejected."""
import dataclasses

from hypothesis import given, settings, strategies as st

from yoda.baselines import ChunkedPrefill
from yoda.dispatcher import SloAware
from yoda.output_predictor import DEFAULT_OUTPUT_LEN, OutputLenPredictor
from yoda.request import SLO, Request
from yoda.scheduler import SchedulerConfig


def test_prediction_uses_session_history_then_the_running_mean_then_a_default():
    p = OutputLenPredictor()
    a1, a2, b1 = Request(0, 0.0, 10, 100, "a"), Request(1, 1.0, 10, 999, "a"), Request(2, 2.0, 10, 7, "b")
    assert p.predict(a1) == DEFAULT_OUTPUT_LEN
    p.observe(a1, 100)
    p.observe(Request(3, 0.0, 10, 300), 300)
    assert p.predict(a2) == 100  # the session's own earlier turn
    assert p.predict(b1) == 200  # no history: the mean of everything finished
    assert OutputLenPredictor(oracle=True).predict(a2) == 999


def _schedulers(oracle: bool):
    small = ChunkedPrefill(SchedulerConfig(num_sms=132, num_layers=8, kv_blocks=100, output_len_oracle=oracle), SLO())
    big = ChunkedPrefill(SchedulerConfig(num_sms=132, num_layers=8, kv_blocks=10_000, output_len_oracle=oracle), SLO())
    big.on_arrival(Request(100, 0.0, 300, 10), 0.0)  # 300 tokens queued there
    return [small, big]


def test_slo_aware_dispatch_does_not_read_the_true_output_length():
    # 160-token prompt, 2,000-token output: 135 blocks, more than the idle instance's 100. Only the oracle
    # sees that and sends it to the busier instance with room; the predicted 256 tokens fit on either.
    request = Request(0, 0.0, 160, 2000)
    assert SloAware().pick(request, _schedulers(oracle=False), 0.0) == 0
    assert SloAware().pick(request, _schedulers(oracle=True), 0.0) == 1


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 100_000), st.integers(1, 100_000))
def test_dispatch_is_the_same_whatever_the_true_output_length(prompt_len, out_a, out_b):
    request = Request(0, 0.0, prompt_len, out_a)
    pick = SloAware().pick(request, _schedulers(oracle=False), 0.0)
    assert SloAware().pick(dataclasses.replace(request, output_len=out_b), _schedulers(oracle=False), 0.0) == pick
