"""The policy's solo-latency estimator: least-squares fits per phase, SM interpolation, mixed iterations."""
import random

import pytest

from sim.contention import ContentionModel
from sim.hardware import get_gpu
from sim.latency import RooflineLatency
from sim.model_spec import get_model
from sim.sampling import fit_estimator
from yoda.estimator import Estimator, Sample
from yoda.partitions import PartitionMenu


def linear_samples(seed: int = 0) -> list[Sample]:
    """Samples from known linear models (ms): prefill 3 n^2 + 2 n r + 40 n + 5, decode 7 K + 0.5 B + 6,
    mixed = prefill terms + 7 K + 0.5 B (n, r, K in units of 1024 tokens), at 64 and 128 SMs (64: twice as slow)."""
    rng = random.Random(seed)
    out = []
    for sms, scale in ((64, 2.0), (128, 1.0)):
        for _ in range(60):
            n, r, b = rng.choice((256, 512, 1024, 1536)), rng.choice((0, 2048, 4096)), rng.randint(1, 64)
            kv = b * rng.choice((512, 1024, 4096))
            pre = 3 * (n / 1024) ** 2 + 2 * (n / 1024) * (r / 1024) + 40 * n / 1024 + 5
            dec = 7 * kv / 1024 + 0.5 * b + 6
            out.append(Sample("prefill", sms, n, r, 1, 0, scale * pre / 1000))
            out.append(Sample("decode", sms, 0, 0, b, kv, scale * dec / 1000))
            out.append(Sample("mixed", sms, n, r, b, kv, scale * (pre + dec - 6) / 1000))
    return out


def test_fit_recovers_linear_models_and_reports_each_phase():
    est = Estimator.fit(linear_samples(), holdout=0.2)
    assert {r.phase for r in est.reports} == {"prefill", "decode", "mixed"}
    assert all(r.max_abs_err < 1e-6 and r.num_holdout > 0 for r in est.reports)
    assert est.prefill_s([1024], [2048], 128) == pytest.approx((3 + 4 + 40 + 5) / 1000)
    assert est.decode_s(8, 8 * 1024, 128) == pytest.approx((56 + 4 + 6) / 1000)
    assert est.mixed_s([1024], [2048], 8, 8 * 1024, 128) == pytest.approx((3 + 4 + 40 + 5 + 56 + 4) / 1000)


def test_sm_sizes_between_and_below_the_fitted_ones():
    est = Estimator.fit(linear_samples(), holdout=0.0)
    lo, hi = est.decode_s(8, 8192, 64), est.decode_s(8, 8192, 128)
    assert est.decode_s(8, 8192, 96) == pytest.approx((lo + hi) / 2)  # linear between fitted sizes
    assert est.decode_s(8, 8192, 32) == pytest.approx(lo * 2)  # below the smallest: scaled by SMs
    assert est.decode_s(8, 8192, 132) == pytest.approx(hi)  # above the largest: unchanged
    # cached per size: asking again (and in another order) gives the same numbers
    assert [est.prefill_s([512], [0], s) for s in (32, 96, 64)] == [est.prefill_s([512], [0], s) for s in (32, 96, 64)]


def test_mixed_without_mixed_samples_is_the_sum_of_both_phases():
    est = Estimator.fit([s for s in linear_samples() if s.phase != "mixed"], holdout=0.0)
    assert not est.mixed_coef
    assert est.mixed_s([512], [0], 16, 16 * 1024, 128) == pytest.approx(
        est.prefill_s([512], [0], 128) + est.decode_s(16, 16 * 1024, 128))


def test_refit_replaces_the_cached_coefficients():
    est = Estimator.fit(linear_samples(), holdout=0.0)
    before = est.decode_s(8, 8192, 128)
    est.refit_all([s._replace(latency_s=s.latency_s * 2) for s in linear_samples()])
    assert est.decode_s(8, 8192, 128) == pytest.approx(2 * before)


def test_fit_on_the_roofline_tracks_fused_iterations_better_than_the_sum():
    model, gpu = get_model("llama3-8b"), get_gpu("h100")
    source = RooflineLatency(model, gpu)
    est = fit_estimator(source, ContentionModel(), gpu, model, PartitionMenu(gpu.num_sms))
    mixed = next(r for r in est.reports if r.phase == "mixed")
    assert mixed.mean_abs_err < 0.03
    for n, b, ctx in ((256, 32, 1024), (1024, 64, 2048), (512, 8, 8192)):
        truth = source.mixed_s([n], [0], b, b * ctx, gpu.num_sms)
        fused = est.mixed_s([n], [0], b, b * ctx, gpu.num_sms)
        summed = est.prefill_s([n], [0], gpu.num_sms) + est.decode_s(b, b * ctx, gpu.num_sms)
        assert abs(fused - truth) < abs(summed - truth)
        assert abs(fused - truth) / truth < 0.08
