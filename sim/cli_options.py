"""The flags the `yoda` commands share (simulate, goodput, sweep, run, calibrate, validate, serve) and what
turns them into a simulation: `policy_options` (--option / --ablation), `make_config` (a checked SimConfig),
`check_goodput_flags`, the trace default, and the command line recorded beside results.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer

from yoda.policies import policy_names

LATENCY_HELP = ("measured (Vidur's kernel tables, the default), roofline (analytic), pdmux (paper fits) or a "
                "calibration profile directory")

TRACE = typer.Option(None, "--trace", help="trace file, or synthetic:NAME[:N] with NAME sharegpt, loogle, "
                     "openthoughts or system_prompt; default: the bundled traces/data/mooncake_sample.jsonl")
FORMAT = typer.Option(None, "--format", help="mooncake, azure or agent; default: detected")
POLICY = typer.Option("yoda", "--policy", help=f"one of {', '.join(policy_names())}")
GPU = typer.Option("h100", "--gpu", help="h100, h200, h800 or a100")
MODEL = typer.Option("llama3-8b", "--model", help="built-in model name or a transformers config path")
TP = typer.Option(1, "--tp", help="tensor-parallel degree per instance")
INSTANCES = typer.Option(1, "--instances", help="GPU instances behind the dispatcher")
PREFILL_INSTANCES = typer.Option(None, "--prefill-instances", help="disagg: prefill instances (default half)")
DISPATCHER = typer.Option("slo_aware", "--dispatcher", help="slo_aware, least_loaded or round_robin")
LATENCY = typer.Option("measured", "--latency", help=LATENCY_HELP)
CONTENTION = typer.Option("default", "--contention", help="default, or pessimistic (1.5x the default's excess "
                          "slowdown; sim/contention.py)")
REPLAY = typer.Option("original", "--replay", help="original (keep the trace's arrival shape), poisson or gamma")
CV = typer.Option(1.0, "--cv", help="gap coefficient of variation for --replay gamma")
SLO_TTFT = typer.Option(1000.0, "--slo-ttft-ms", help="TTFT target (ms)")
SLO_PER_TOKEN = typer.Option(0.25, "--slo-ttft-ms-per-token", help="TTFT target per prompt token (ms); the "
                             "target is the larger of this x prompt length and --slo-ttft-ms; 0: fixed target")
SLO_TBT = typer.Option(50.0, "--slo-tbt-ms", help="TBT target (ms), every gap between output tokens")
SEED = typer.Option(0, "--seed", help="seed of every random step (bucket spreading, re-timing, synthetic)")
MAX_REQUESTS = typer.Option(None, "--max-requests", help="keep only the first N requests of the trace")
OPTION = typer.Option([], "--option", help="policy option key=value (int/float/bool/str), repeatable, e.g. "
                      "token_budget=1024; prefix with a policy name (chunked.token_budget=1024) to target one policy")
ORACLE_ABLATION = "oracle_output_len"
ABLATION = typer.Option([], "--ablation", help="yoda ablation, repeatable: no_layerwise, no_query_merge, "
                        "no_guard, static_partition or no_preemption (yoda.gang_scheduler.ABLATIONS); and for "
                        "any policy oracle_output_len (decisions read true output lengths)")
NO_CONTENTION = typer.Option(False, "--no-contention", help="lanes do not slow each other down")
SKIP_BAD = typer.Option(False, "--skip-bad", help="skip malformed trace lines instead of failing")
JSON_OUT = typer.Option(False, "--json", help="print the results as one JSON object on stdout, nothing else")
START_RPS = typer.Option(None, "--start-rps", help="first rate probed (req/s); default: the trace's own rate")
CRITERION = typer.Option("strict", "--criterion", help="strict (the headline: fleet and per_request both), "
                         "fleet (P99 TTFT and P99 TBT over all token gaps within targets), per_request (>= 90% "
                         "of requests meet TTFT and have their own P99 gap within TBT) or attainment (>= 90% of "
                         "requests meet TTFT and TPOT)")
MAX_PROBES = typer.Option(20, "--max-probes", help="most simulations the goodput search runs")
DEFAULT_SWEEP_RATES = "0.25,0.5,1,2"
FORCE = typer.Option(False, "--force", help="use a --latency profile measured on another GPU or model (warns)")
TRUNCATE = typer.Option(False, "--truncate", help="cut requests longer than the model's context to fit it "
                        "(outputs to half the context, prompts to the rest) instead of refusing the trace")


def parse_option(text: str) -> tuple[str, Any]:
    """`key=value` with value as int, float, bool (true/false), None (none) or str."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option must be key=value, got {text!r}")
    raw = raw.strip()
    if raw.lower() in ("true", "false"):
        return key.strip(), raw.lower() == "true"
    if raw.lower() == "none":
        return key.strip(), None
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), raw


def policy_options(policy: str, options: list[str], ablations: list[str], strict: bool = True) -> dict:
    """Options for `policy`: ablations first, then --option values (those prefixed with another policy's
    name are skipped). With `strict`, an ablation on a policy other than yoda is an error."""
    out: dict[str, Any] = {}
    if ablations:
        from yoda.gang_scheduler import ABLATIONS
        for name in ablations:
            if name not in ABLATIONS:
                raise ValueError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
            if policy == "yoda":
                out.update(ABLATIONS[name])
            elif strict:
                raise ValueError(f"--ablation applies to --policy yoda, not {policy!r}")
    for text in options:
        key, value = parse_option(text)
        target, dot, name = key.partition(".")
        if dot and target not in policy_names():
            raise ValueError(f"--option {key}: {target!r} is not a policy; choose from {', '.join(policy_names())}")
        if not dot or target == policy:
            out[name if dot else key] = value
    return out


def make_config(flags: dict, policy: str | None = None, strict: bool = True):
    """SimConfig from the shared flags, checked by building (and discarding) the cluster once."""
    import simpy

    from sim.run import SimConfig, build
    from yoda.request import SLO

    policy = policy or flags["policy"]
    if flags["prefill_instances"] is not None and policy != "disagg":
        raise ValueError("--prefill-instances applies to --policy disagg")
    if flags["tp"] < 1:
        raise ValueError(f"--tp must be >= 1, got {flags['tp']}")
    slo = SLO(ttft_ms=flags["slo_ttft_ms"], tbt_ms=flags["slo_tbt_ms"],
              ttft_ms_per_token=flags["slo_ttft_ms_per_token"])
    # oracle_output_len (any policy): decisions read true output lengths, which no server knows
    ablations = [a for a in flags["ablation"] if a != ORACLE_ABLATION]
    cfg = SimConfig(policy=policy, gpu=flags["gpu"], model=flags["model"], tp=flags["tp"],
                    num_instances=flags["instances"], num_prefill_instances=flags["prefill_instances"],
                    dispatcher=flags["dispatcher"], latency=flags["latency"], contention=not flags["no_contention"],
                    contention_mode=flags.get("contention", "default"),
                    slo=slo, policy_options=policy_options(policy, flags["option"], ablations, strict),
                    output_len_oracle=len(ablations) < len(flags["ablation"]))
    try:
        build(cfg, simpy.Environment())
    except TypeError as e:  # a policy constructor refused an option
        raise ValueError(f"bad --option/--ablation for policy {policy}: {e}") from None
    return cfg


def trace_path(flags: dict) -> str:
    if flags["trace"]:
        return flags["trace"]
    from traces import SAMPLE_DIR
    return str(SAMPLE_DIR / "mooncake_sample.jsonl")


def command_line(ctx: typer.Context) -> str:
    return shlex.join(["yoda", ctx.info_name or "", *ctx.meta.get("raw_args", [])])


def jsonable_flags(flags: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}


def check_goodput_flags(start_rps: float | None, criterion: str, max_probes: int) -> None:
    if start_rps is not None and start_rps <= 0:
        raise ValueError(f"--start-rps must be > 0, got {start_rps}")
    from yoda.goodput import CRITERIA

    if criterion not in CRITERIA:
        raise ValueError(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if max_probes < 1:
        raise ValueError(f"--max-probes must be >= 1, got {max_probes}")
