"""Calibration: measure the executor on a device, fit the models the policy and the simulator use, and
check the simulator against the executor (DESIGN.md section 8).

    bench.py     the timing bench on the Engine (one launch at a time) and the grids it measures
    measure.py   resumable grids of solo prefill/decode latency per partition size through the bench
                 -> samples.csv, metadata.json; contention.py: (CUDA) the both-lanes grid -> contention.csv
    fit.py       Estimator and contention guards from a profile (load_estimator), fit.json, plots, and the
                 GpuSpec / ModelSpec a profile describes
    validate.py  serve a trace on the executor, replay it in the simulator on the profile, compare per request
    cli.py       `yoda calibrate` and `yoda validate`
    estimators.py  the yoda policy's estimator for a served trace: profile, quick CPU measurement or roofline
    short_run.py the device run's short calibration and validation, one process each, without typer
    profiles/    bundled profiles (see profiles/README.md)
"""
