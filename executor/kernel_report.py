"""Compile every Triton kernel the executor launches, at a model's shapes, ahead of time for a GPU target
(sm_90 by default; no GPU needed) and read registers, spills and shared memory off the cubin.

    rows = kernel_report(["llama3-8b", "qwen2.5-7b"])     # one dict per distinct compiled kernel
    [r for r in rows if r["spill_bytes"]]                  # must be empty

Launch parameters come from executor.triton_kernels' `*_params` functions, the same ones the launches use;
pointers and strides are specialized as divisible by 16, as the JIT specializes them at these shapes.
`cuobjdump -res-usage` (shipped in triton's package, backends/nvidia/bin) reads the cubin: STACK and LOCAL
bytes are spills. Triton's own cache keeps the compiled kernels, so a second run takes seconds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Iterator, NamedTuple

import torch
import triton

from executor import triton_kernels as tk
from executor.config import head_dim, load_config

SM90 = (90, 32)  # compute capability, warp size
MAX_SHARED_BYTES = 232448  # sm_90: 227 KB of shared memory per block (opt-in)
SPLITS = (1, 32)  # split-KV programs: the fewest and the most attn_metadata.choose_num_splits picks
BF16 = "*bf16"
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


class KernelSpec(NamedTuple):
    name: str
    fn: object  # the @triton.jit function
    pointers: dict[str, str]  # pointer argument -> Triton type ("*bf16"); other runtime args are i32/fp32
    params: dict  # constexprs plus num_warps (and num_stages when set)
    aligned: bool = True  # pointers and strides divisible by 16 (what runs); False: the worst case


def model_specs(model: str, block_size: int = 16) -> Iterator[KernelSpec]:
    """The kernels one bf16 forward of `model` launches on a GPU (decode at both split extremes)."""
    c = load_config(model)
    d, hq, hk = head_dim(c), c.num_attention_heads, c.num_key_value_heads
    attn = {"q_ptr": BF16, "k_ptr": BF16, "v_ptr": BF16, "tables_ptr": "*i32", "seq_lens_ptr": "*i32"}
    yield KernelSpec("rms_norm", tk._rms_norm_kernel, {"x_ptr": BF16, "w_ptr": BF16, "out_ptr": BF16},
                     tk.rms_norm_params(c.hidden_size, False))
    yield KernelSpec("rope", tk._rope_kernel, {"q_ptr": BF16, "k_ptr": BF16, "pos_ptr": "*i64",
                                              "cos_sin_ptr": "*fp32"}, tk.rope_params(hq, hk, d, False))
    yield KernelSpec("silu_mul", tk._silu_mul_kernel, {"x_ptr": BF16, "out_ptr": BF16}, tk.silu_mul_params(False))
    for splits in SPLITS:
        yield KernelSpec("decode_split", tk._decode_split_kernel,
                         {**attn, "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32"},
                         tk.decode_split_params(hq // hk, d, block_size, splits, torch.bfloat16, False))
        yield KernelSpec("decode_reduce", tk._decode_reduce_kernel,
                         {"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "out_ptr": BF16},
                         tk.decode_reduce_params(d, splits))
    prefill = KernelSpec("prefill", tk._prefill_kernel, {**attn, "out_ptr": BF16, "query_start_ptr": "*i32"},
                         tk.prefill_params(hq // hk, d, block_size, torch.bfloat16, False))
    yield prefill
    # the attention kernels hold the most registers: also compiled without the alignment specialization,
    # which a misaligned view or stride would get (no vector loads, no async copies into shared memory)
    yield prefill._replace(aligned=False)
    yield KernelSpec("decode_split", tk._decode_split_kernel,
                     {**attn, "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32"},
                     tk.decode_split_params(hq // hk, d, block_size, SPLITS[-1], torch.bfloat16, False), False)


def _aligned(name: str) -> bool:
    """Arguments the launch specializes as divisible by 16 at these models' shapes, as Triton's JIT does at
    run time: every pointer (torch allocations and the q/k/v views are 16-byte aligned) and every stride
    (multiples of head_dim), but not the block-table stride (the table's width varies)."""
    return name.endswith("_ptr") or ("stride" in name and name != "table_stride")


def _signature(spec: KernelSpec) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs by argument index, divisibility attributes, compile options) for triton.compile."""
    options = {k: v for k, v in spec.params.items() if k in ("num_warps", "num_stages")}
    const = {k: v for k, v in spec.params.items() if k not in options}
    names = spec.fn.arg_names
    missing = set(const) - set(names)
    if missing:
        raise ValueError(f"{spec.name}: parameters {sorted(missing)} are not arguments of the kernel")
    sig = {n: spec.pointers.get(n) or ("constexpr" if n in const else "fp32" if n in ("scale", "eps") else "i32")
           for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if spec.aligned and n not in const and _aligned(n)}
    return sig, {(names.index(k),): v for k, v in const.items()}, attrs, options


def compile_spec(spec: KernelSpec, target: tuple[int, int] = SM90):
    """The compiled kernel (triton.compiler.CompiledKernel) for `target`; works without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs, options = _signature(spec)
    source = ASTSource(fn=spec.fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", *target), options=options)


def cuobjdump_path() -> str:
    shipped = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    found = shipped if os.path.exists(shipped) else shutil.which("cuobjdump")
    if not found:
        raise FileNotFoundError("cuobjdump: neither in triton's backends/nvidia/bin nor on PATH")
    return found


def resource_usage(cubin: bytes) -> dict:
    """{'registers', 'stack_bytes', 'local_bytes', 'static_shared_bytes'} from `cuobjdump -res-usage`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump_path(), "-res-usage", f.name], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    m = _RES.search(text)
    if m is None:
        raise ValueError(f"cuobjdump printed no resource usage: {text[:200]!r}")
    regs, stack, shared, local = (int(x) for x in m.groups())
    return {"registers": regs, "stack_bytes": stack, "local_bytes": local, "static_shared_bytes": shared}


def _describe(spec: KernelSpec) -> str:
    keys = ("GROUP", "BLOCK_M", "BLOCK_N", "BLOCK_H", "BLOCK", "NUM_SPLITS", "BLOCK_HQ", "BLOCK_HK", "num_warps")
    return " ".join(f"{k}={spec.params[k]}" for k in keys if k in spec.params)


def _key(spec: KernelSpec) -> tuple:
    return (spec.name, spec.aligned, tuple(sorted((k, str(v)) for k, v in spec.params.items())))


def report_row(spec: KernelSpec, models: list[str], target: tuple[int, int] = SM90) -> dict:
    """One kernel's compiled resources; a compile failure is a row with `error` (and not ok)."""
    row = {"kernel": spec.name, "models": models, "launch": _describe(spec), "aligned": spec.aligned,
           "num_warps": spec.params.get("num_warps", 4)}
    try:
        compiled = compile_spec(spec, target)
        usage = resource_usage(compiled.asm["cubin"])
    except Exception as e:  # report it with the others; the preflight fails on it
        return {**row, "error": f"{type(e).__name__}: {str(e)[:300]}", "ok": False}
    shared = usage["static_shared_bytes"] + int(compiled.metadata.shared)
    spill = usage["stack_bytes"] + usage["local_bytes"]
    return {**row, **usage, "dynamic_shared_bytes": int(compiled.metadata.shared), "shared_bytes": shared,
            "spill_bytes": spill, "ok": spill == 0 and shared <= MAX_SHARED_BYTES}


def kernel_report(models: list[str], block_size: int = 16, target: tuple[int, int] = SM90,
                  kernels: set[str] | None = None) -> list[dict]:
    """Every distinct kernel the models launch (optionally only `kernels`), compiled once each."""
    specs: dict[tuple, tuple[KernelSpec, list[str]]] = {}
    for model in models:
        for spec in model_specs(model, block_size):
            if kernels is None or spec.name in kernels:
                specs.setdefault(_key(spec), (spec, []))[1].append(model)
    return [report_row(spec, users, target) for spec, users in specs.values()]
