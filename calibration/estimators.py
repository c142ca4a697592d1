"""Where the yoda policy's estimator comes from when the executor serves a trace: the calibration profile,
else a quick measurement on the CPU, else the roofline of the model on the GPU's datasheet.

    backend = open_backend("tiny")
    estimator, source = run_estimator(backend, cfg)     # then executor.runner.serve(..., estimator, source)

The runner takes the estimator as an argument (it imports neither calibration nor sim), so this module is
the one place that chooses it.
"""
from __future__ import annotations

from executor.runner import Backend, RunConfig


def run_estimator(backend: Backend, cfg: RunConfig):
    """(Estimator, where its numbers come from) for policy yoda on `backend`."""
    from calibration.fit import load_estimator, roofline_estimator

    if cfg.profile:
        return load_estimator(cfg.profile), f"calibration profile {cfg.profile}"
    if backend.device.type == "cpu":
        from calibration.measure import quick_estimator
        return quick_estimator(backend, cfg.block_size, cfg.clock), "quick CPU measurement at start-up (no --profile)"
    return roofline_estimator(backend), "roofline of the model on the GPU's datasheet (no --profile)"
