"""What a profile records about the machine it measured: device, peaks and library versions.

    device_info(backend)   # {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "num_sms": 132, ...}
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from executor.device_check import driver_version
from executor.runner import Backend


def device_info(backend: Backend) -> dict:
    dev = backend.device
    matmul_tflops, copy_gbps = _peaks(dev)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return {"type": "cuda", "name": props.name, "num_sms": props.multi_processor_count,
                "memory_gib": props.total_memory / 2**30, "driver": driver_version(), "cuda": torch.version.cuda,
                "matmul_tflops": matmul_tflops, "copy_gbps": copy_gbps}
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"type": "cpu", "name": _cpu_name(), "num_sms": backend.num_sms, "logical_sms": True,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gib": memory,
            "matmul_tflops": matmul_tflops, "copy_gbps": copy_gbps}


def versions() -> dict:
    import numpy
    import transformers
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "transformers": transformers.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def _peaks(device: torch.device) -> tuple[float, float]:
    """(matmul TFLOP/s, copy GB/s) measured here: bf16 8192^3 on CUDA, fp32 512^3 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, dtype=dtype, device=device)
    x = torch.empty(1 << (29 if device.type == "cuda" else 24), dtype=torch.float16, device=device)
    y = torch.empty_like(x)
    mm = _median_s(lambda: a @ a, device)
    cp = _median_s(lambda: y.copy_(x), device)
    return 2 * n ** 3 / mm / 1e12, 2 * x.numel() * 2 / cp / 1e9


def _median_s(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

