"""Plots stay readable at trace scale: the timeline is binned to about the figure's width."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.plots import SCREEN_BINS, binned, plot_timeline


def _timeline(num_launches: int, num_instances: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"instance": rng.integers(0, num_instances, num_launches),
                         "at": np.sort(rng.uniform(0, 3000, num_launches)),
                         "lane": rng.choice(["decode", "prefill"], num_launches),
                         "num_sms": rng.choice([16, 66, 116, 132], num_launches),
                         "decode_batch": rng.integers(0, 64, num_launches),
                         "prefill_tokens": rng.integers(0, 4096, num_launches),
                         "queued": rng.integers(0, 10, num_launches), "duration_s": 0.01})


def test_binned_series_have_one_point_per_bin_and_keep_token_totals() -> None:
    frame = _timeline(50_000, 1)
    edges = np.linspace(0.0, 3000.0, SCREEN_BINS, endpoint=False)
    rate = binned(frame, "prefill_tokens", "rate", edges)
    assert len(rate) == SCREEN_BINS
    assert np.isclose((rate * (edges[1] - edges[0])).sum(), frame["prefill_tokens"].sum())
    mean = binned(frame, "decode_batch", "mean", edges)
    assert len(mean) == SCREEN_BINS and not mean.isna().any()
    assert mean.min() >= frame["decode_batch"].min() and mean.max() <= frame["decode_batch"].max()


def test_timeline_of_a_large_cluster_draws_a_band(tmp_path: Path) -> None:
    path = plot_timeline(_timeline(20_000, 8), tmp_path / "timeline.png")
    assert path.stat().st_size > 0
    assert plot_timeline(_timeline(0, 1), tmp_path / "empty.png").stat().st_size > 0
