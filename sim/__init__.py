"""Simulator backend: a SimPy model of GPUs running the policy core's launches.

GPU model (numpy/scipy/pandas only, no simpy, so the policy's estimator can use it too):
- hardware.py: GpuSpec and built-in GPUs; compute and HBM bandwidth share of an SM partition.
- model_spec.py: ModelSpec (Llama/Qwen2 shapes), FLOPs and bytes per GPU, KV capacity.
- latency.py: LatencySource protocol, launch_solo_s, RooflineLatency (default), PdmuxFitLatency.
- profile_table.py: measured profile tables (write_profile_table, ProfileTableLatency).
- contention.py: slowdown of one lane while the other runs (ContentionModel, NoContention).

Simulation (simpy): gpu_instance.py (one GPU's two lanes), cluster.py (dispatch, KV link), run.py (SimConfig,
build, simulate), shards.py (uncoupled instances in parallel processes), sampling.py (the policy's estimator
fitted on the latency source), workloads.py (trace and replay flags to requests), cli.py (with
cli_options.py, goodput_cli.py, sweep_cli.py), sweep.py, outputs.py.
"""
