"""Real-GPU backend (the HTTP serving layer on top of it is the `serve` package): model, Triton kernels, paged KV pool, SM partitions (green contexts) and the engine.

    config.py           built-in model configs by name (llama3-8b, llama3-70b, qwen2.5-7b, tiny) or config.json
    model.py            Llama/Qwen2 decoder for layer groups: embed / run_layers / logits; random or safetensors
    attn_metadata.py    a batch's positions, KV slots, block tables and lengths (decode, prefill, mixed)
    triton_kernels.py   paged split-KV decode attention, prefix-aware prefill attention, RMSNorm, RoPE, SiLU-mul
    torch_reference.py  the same functions in plain torch (ground truth; the CPU default)
    kv_pool.py          per-layer paged K/V tensors addressed by yoda.kv_cache block ids
    partitions.py       green-context (prefill, decode) stream pairs per SM split; one-lane fallback
    decode_graph.py     decode CUDA graphs per (decode partition, batch-size bucket)
    engine.py           runs Launches on the partitions, polls CUDA events, samples tokens
    prompts.py          synthetic prompt tokens for traces that give only lengths and hash blocks
    memory_plan.py      one memory budget: weights, KV pool, decode graphs, logits, prefill activations, workspace
    gpu_check.py        `python -m executor.gpu_check`: --preflight (CPU), --device-run, or the GPU sections
    preflight.py        CPU pre-flight: kernels for sm_90, memory plans of H200/H100, partitions on a faked driver
    kernel_report.py    AOT-compile every launched Triton kernel for sm_90; registers, spills, shared memory
    fake_driver.py      cuda.bindings driver stand-in (real argument types checked) for the partition builder
    device_check.py     the GPU sections: device peaks, partitions, decode/prefill per partition, both lanes
    gpu_check_report.py the GPU sections' results as markdown (gpu_check.md, under device_run.md's summary)
    device_run.py       the one device command: GPU sections, then short calibration and validation, <= 8 min
    runner.py           real-time trace replay driver (`yoda run --backend executor`); clocks.py: wall/CPU clocks
    cli.py              `yoda run`
    tokenizer.py        local transformers tokenizer or byte-level fallback; prefix block hashes
"""
