"""How well each latency source predicts measured kernel times it was not built from (`yoda fidelity`).

Checks (relative error |predicted / measured - 1| per point; median, P90, max and the point count):
- transfer: built from the A100 Llama-2-7b table, predict the A100 Meta-Llama-3-8B table: per-layer time of
  the four linear operators, num_tokens 1..4096, TP 1/2/4/8 (the proxy step the H100 Llama-3-8B takes);
- leave_out: every other num_tokens point of each table held out (built from the rest);
- tp8: Llama-70B on 8 H100s: per-layer linear time plus two all-reduces, built from the TP 1/2/4 columns
  of the H100 Llama-2-70b table (same shape as Llama-3-70B) and the measured all-reduce table;
- sm_scaling: T(s) / T(all SMs) of prefill and decode against the per-SM-count fits of the pdmux authors
  (H800, pdmux_predictor_fits.json): the shape of SM scaling, not absolute times.
Sources: roofline (analytic; not built from any table), pdmux (the fits; whole-layer time = prefill / layers,
attention included, no TP: TP1 points only, and it is the reference of sm_scaling), measured.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from sim.hardware import GpuSpec, get_gpu
from sim.latency import PdmuxFitLatency, RooflineLatency, Work
from sim.measured_latency import MeasuredLatency
from sim.model_spec import ModelSpec, get_model
from sim.operator_tables import GEMM_OPS, AllReduceTable, GemmLibrary, OperatorTable, Shape, read_table

SOURCES = ("roofline", "pdmux", "measured")
CHECKS = ("transfer", "leave_out", "tp8", "sm_scaling")
MAX_TOKENS = 4096
# pdmux fit table and the TP it stands for, per GPU family (sim.latency.PdmuxFitLatency's NOTE)
PDMUX_TABLE = {("a100", False): ("A100_8B", 1), ("a100", True): ("A100", 8), ("h100", False): ("H800", 1),
               ("h100", True): ("H800", 8)}


def summary(predicted: np.ndarray, measured: np.ndarray) -> dict:
    err = np.abs(np.asarray(predicted, float) / np.asarray(measured, float) - 1.0)
    if not len(err):
        return {"median": None, "p90": None, "max": None, "points": 0}
    return {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)), "max": float(err.max()),
            "points": int(len(err))}


def table_model(table: OperatorTable, tp: int) -> ModelSpec:
    s = table.shape
    return ModelSpec(table.name, 32, s.hidden, s.num_heads, s.num_kv_heads, s.hidden // s.num_heads,
                     s.intermediate, 32000, tp=tp)


def linear_ms(table: OperatorTable, tp: int, keep: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """(num_tokens <= MAX_TOKENS, measured per-layer ms of the four GEMMs) of one TP column."""
    tokens = table.tokens(tp)
    total = sum(table.op_ms(op, tp) for op in GEMM_OPS)
    mask = tokens <= MAX_TOKENS
    return tokens[mask][keep], total[mask][keep]


def roofline_linear_ms(model: ModelSpec, gpu: GpuSpec, tokens: np.ndarray) -> np.ndarray:
    roof = RooflineLatency(model, gpu)
    out = []
    for m in tokens.astype(int):
        work = Work(model.linear_flops_per_token_layer * m, 0.0, model.layer_weight_bytes, 0.0, 0.0, int(m))
        gemm_c, gemm_m, _, _ = roof.compute_memory_s(work, gpu.num_sms)
        out.append((max(gemm_c, gemm_m) + roof.layer_overhead_s) * 1e3)
    return np.array(out)


def pdmux_layer_ms(gpu_family: str, large: bool, tokens: np.ndarray, num_layers: int) -> np.ndarray:
    name, _ = PDMUX_TABLE[(gpu_family, large)]
    fit = PdmuxFitLatency(name)
    return np.array([fit.prefill_s([int(m)], [0], fit.num_sms) * 1e3 / num_layers for m in tokens])


def measured_linear_ms(library: GemmLibrary, model: ModelSpec, tokens: np.ndarray) -> np.ndarray:
    shape = Shape(model.num_heads, model.num_kv_heads, model.hidden, model.intermediate)
    return sum(library.gemm_ms(tokens, k, n) for k, n in shape.gemms(model.tp).values())


def check_transfer() -> dict:
    source, target = OperatorTable("a100_llama-2-7b"), OperatorTable("a100_llama-3-8b")
    library, gpu = GemmLibrary([source]), get_gpu("a100")
    got: dict[str, tuple[list, list]] = {s: ([], []) for s in SOURCES}
    for tp in sorted(target.by_tp):
        tokens, truth = linear_ms(target, tp)
        model = table_model(target, tp)
        predictions = {"roofline": roofline_linear_ms(model, gpu, tokens),
                       "measured": measured_linear_ms(library, model, tokens)}
        if tp == PDMUX_TABLE[("a100", False)][1]:
            predictions["pdmux"] = pdmux_layer_ms("a100", False, tokens, 32)
        for name, pred in predictions.items():
            got[name][0].extend(pred)
            got[name][1].extend(truth)
    return {name: summary(*got[name]) for name in SOURCES}


def check_leave_out() -> dict:
    got: dict[str, tuple[list, list]] = {s: ([], []) for s in SOURCES}
    for family, names in (("h100", ("h100_llama-2-7b", "h100_llama-2-70b")),
                          ("a100", ("a100_llama-2-7b", "a100_llama-3-8b", "a100_llama-3-70b"))):
        gpu = get_gpu(family)
        for name in names:
            table = OperatorTable(name)
            large = table.shape.hidden > 4096
            for tp in sorted(table.by_tp):
                tokens, truth = linear_ms(table, tp, slice(1, None, 2))
                built = _thinned(table)  # the even points only
                model = table_model(table, tp)
                predictions = {"roofline": roofline_linear_ms(model, gpu, tokens),
                               "measured": measured_linear_ms(GemmLibrary([built]), model, tokens)}
                if tp == PDMUX_TABLE[(family, large)][1]:
                    predictions["pdmux"] = pdmux_layer_ms(family, large, tokens, 80 if large else 32)
                for source, pred in predictions.items():
                    got[source][0].extend(pred)
                    got[source][1].extend(truth)
    return {name: summary(*got[name]) for name in SOURCES}


def _thinned(table: OperatorTable, keep_tp: Callable[[int], bool] = lambda tp: True) -> OperatorTable:
    """A copy of `table` with every other num_tokens point (from the first) and only the TPs kept."""
    out = OperatorTable.__new__(OperatorTable)
    out.name, out.shape = table.name + "-thinned", table.shape
    out.by_tp = {tp: g.iloc[::2] for tp, g in table.by_tp.items() if keep_tp(tp)}
    return out


def check_tp8() -> dict:
    table, gpu = OperatorTable("h100_llama-2-70b"), get_gpu("h100")
    tokens, linear = linear_ms(table, 8)
    raw = read_table("h100_dgx_all_reduce")
    raw = raw[raw.num_workers == 8].sort_values("size")
    payload = tokens * table.shape.hidden * 2  # bf16 activations of every token
    truth = linear + 2 * np.interp(payload, raw["size"], raw["all_reduce_ms"])
    model = replace(get_model("llama3-70b"), tp=8)
    built = OperatorTable.__new__(OperatorTable)
    built.name, built.shape = table.name + "-tp124", table.shape
    built.by_tp = {tp: g for tp, g in table.by_tp.items() if tp != 8}
    all_reduce = AllReduceTable()
    measured = measured_linear_ms(GemmLibrary([built]), model, tokens) + np.array(
        [2e3 * all_reduce.time_s(8, p) for p in payload])
    roof = RooflineLatency(model, gpu)
    comm = 2 * (roof.allreduce_latency_s + payload * 2 * 7 / 8 / gpu.nvlink_bytes_per_s) * 1e3
    predictions = {"roofline": roofline_linear_ms(model, gpu, tokens) + comm, "measured": measured,
                   "pdmux": pdmux_layer_ms("h100", True, tokens, model.num_layers)}
    return {name: summary(predictions[name], truth) for name in SOURCES}


def check_sm_scaling() -> dict:
    gpu, model = get_gpu("h800"), get_model("llama3-8b")
    reference = PdmuxFitLatency("H800")
    sms = [s for s in reference.prefill[0][1].sms if s < reference.num_sms]
    sources = {"roofline": RooflineLatency(model, gpu), "pdmux": reference, "measured": MeasuredLatency(model, gpu)}
    probes: list[Callable] = [lambda src, s, n=n: src.prefill_s([n], [0], s) for n in (1024, 2048, 4096, 8192)]
    probes += [lambda src, s, b=b: src.decode_s(b, b * 2048, s) for b in (8, 32, 128)]
    out = {}
    for name, src in sources.items():
        pred, truth = [], []
        for probe in probes:
            full, ref_full = probe(src, gpu.num_sms), probe(reference, reference.num_sms)
            for s in sms:
                pred.append(probe(src, s) / full)
                truth.append(probe(reference, s) / ref_full)
        out[name] = summary(pred, truth)
    return out


def fidelity() -> dict:
    checks = {"transfer": check_transfer, "leave_out": check_leave_out, "tp8": check_tp8,
              "sm_scaling": check_sm_scaling}
    return {"checks": {name: run() for name, run in checks.items()}, "transfer_context": transfer_context()}


def transfer_context() -> dict:
    """What bounds the transfer check: (a) each operator of the Llama-2-7b table scaled by its FLOP ratio (the
    baseline to beat; also per TP, beside the measured source per TP) and (b) the reproducibility floor: GEMMs
    of identical shape in both A100 tables (the 3-8B QKV at TP t is the 2-7B QKV at TP 2t; O projections match
    at every TP) compared point by point."""
    source, target = OperatorTable("a100_llama-2-7b"), OperatorTable("a100_llama-3-8b")
    flop_pred, flop_truth, same_pred, same_truth = [], [], [], []
    per_tp: dict[str, dict] = {}
    library = GemmLibrary([source])
    for tp in sorted(target.by_tp):
        tokens, truth = linear_ms(target, tp)
        src_shapes, tgt_shapes = source.shape.gemms(tp), target.shape.gemms(tp)
        pred = sum(np.interp(tokens, source.tokens(tp), source.op_ms(op, tp))
                   * (tgt_shapes[op][0] * tgt_shapes[op][1]) / (src_shapes[op][0] * src_shapes[op][1])
                   for op in GEMM_OPS)
        flop_pred.extend(pred)
        flop_truth.extend(truth)
        per_tp[f"flop_ratio_baseline_tp{tp}"] = summary(pred, truth)
        per_tp[f"measured_tp{tp}"] = summary(measured_linear_ms(library, table_model(target, tp), tokens), truth)
        mask = target.tokens(tp) <= MAX_TOKENS
        for op, kn in tgt_shapes.items():
            for stp in sorted(source.by_tp):
                for sop, skn in source.shape.gemms(stp).items():
                    if skn == kn:
                        same_pred.extend(np.interp(tokens, source.tokens(stp), source.op_ms(sop, stp)))
                        same_truth.extend(target.op_ms(op, tp)[mask])
    return {"flop_ratio_baseline": summary(flop_pred, flop_truth),
            "identical_shape_floor": summary(same_pred, same_truth), **per_tp}
