"""The cross-check's own side: the injected iteration time prices our launches in Vidur's token counts
(a lone request's token times follow from the formula), and agreement is judged per request."""
import pytest

from benchmarks.vidur_crosscheck import IterationTime, Setting, compare, peak_in_system, run_ours


@pytest.mark.parametrize("decode_steps", [1, 64])
def test_a_lone_request_follows_the_injected_iteration_time(decode_steps):
    it, prompt, output = IterationTime(), 300, 6
    (rec,) = run_ours([(0.5, prompt, output)], Setting("lone", 8, 1000, 1.0), it, decode_steps)
    t = it.of(prompt, prompt)  # one prefill iteration: q = kv = the prompt
    expected = [t]
    for k in range(1, output):  # Vidur counts a decode's KV as its context plus the token it produces
        t += it.of(1, prompt + k + 1)
        expected.append(t)
    assert rec["ttft_s"] == pytest.approx(expected[0], rel=1e-12)
    assert rec["e2e_s"] == pytest.approx(expected[-1], rel=1e-12)


def test_compare_flags_any_request_beyond_the_tolerance():
    ours = [{"ttft_s": 0.1, "tpot_s": 0.01, "e2e_s": 1.0, "num_preemptions": 0, "arrival_at": 0.0,
             "finished_at": 1.0}] * 2
    same = [{"ttft_s": 0.1, "tpot_s": 0.01, "e2e_s": 1.0, "num_restarts": 0}] * 2
    off = [same[0], {**same[0], "e2e_s": 1.0 + 2e-6}]
    assert compare(ours, same)["agree"] and compare(ours, same)["requests_within_tolerance"] == 2
    assert not compare(ours, off)["agree"] and compare(ours, off)["requests_within_tolerance"] == 1
    assert peak_in_system(ours) == 2
