"""Real-GPU backend: model, Triton kernels, paged KV pool, SM partitions (green contexts) and the engine."""
