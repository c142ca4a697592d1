"""gpu_check: roofline arithmetic on the CPU, and a clean exit without CUDA."""
from pathlib import Path

import pytest
import torch

from executor.config import load_config
from executor.device_check import decode_bytes, prefill_flops
from executor.gpu_check import main
from executor.memory_plan import layer_params


def test_llama3_8b_roofline_numbers():
    c = load_config("llama3-8b")
    assert layer_params(c) == 4096 * (32 + 16) * 128 + 4096 * 4096 + 3 * 4096 * 14336  # 218M per layer
    weights = 32 * layer_params(c) + 128256 * 4096
    assert decode_bytes(c, 32, batch=1, context_len=0) == 2 * weights  # ~15 GB of bf16 weights
    assert decode_bytes(c, 32, 2, 1000) - decode_bytes(c, 32, 1, 1000) == 2 * 2 * 1000 * 8 * 128 * 32
    assert prefill_flops(c, 32, 1) == pytest.approx(2 * 32 * layer_params(c) + 32 * 4 * 4096 + 2 * 4096 * 128256)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_exits_cleanly_without_cuda(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_markdown_summary_of_partial_results():
    from executor.gpu_check_report import sections_markdown as _markdown

    results = {
        "args": {"model": "llama3-8b", "num_layers": 8}, "layer_scale": 4.0,
        "device": {"name": "H100", "num_sms": 132, "torch": "2.11", "cuda": "13.0", "hbm_copy_gbps": 3000.0,
                   "bf16_matmul_tflops": 790.0},
        "partitions": {"reason": "", "streams": [{"lane": "decode", "planned_sms": 20, "realised_sms": 20,
                                                  "create_s": 0.002}]},
        "decode": [{"decode_sms": 20, "batch": 1, "context": 1024, "ms": 1.5, "floor_ratio": 1.3}],
        "prefill": {"error": "RuntimeError: boom"},
        "graph_containment": {"contained": True},
    }
    md = _markdown(results)
    assert "| decode | 20 | 20 | 2.00 |" in md and "| 20 | 1 | 1024 | 1.5 | 1.3 |" in md
    assert "boom" in md and "## both_lanes" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_device_run_exits_cleanly_without_cuda(tmp_path, capsys):
    assert main(["--device-run", "--out", str(tmp_path)]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_out_is_required_outside_preflight(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_device_run_steps_carry_wheels_and_report_timeouts(tmp_path):
    import os

    from executor.device_run import _python_path, _subprocess_step

    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "simpy-4.1.1-py3-none-any.whl").write_bytes(b"")
    path = _python_path(tmp_path, wheels).split(os.pathsep)
    assert path[:2] == [str(tmp_path), str(wheels / "simpy-4.1.1-py3-none-any.whl")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    step = _subprocess_step("calibrate", ["calibrate", "--out", str(tmp_path / "p"), "--device", "cpu",
                                          "--model", "tiny"], 0.5, tmp_path, env)
    assert step == {"error": "timed out after 0 s"} and (tmp_path / "calibrate.log").exists()
