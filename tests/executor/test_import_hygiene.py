"""The executor and `yoda calibrate --device cuda` import on a GPU image without simpy or the serving stack,
and the executor imports no calibration (the estimator is passed in)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("simpy", "fastapi", "uvicorn", "pydantic")
BLOCK = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
EXECUTOR_MODULES = ("executor.engine", "executor.runner", "executor.partitions", "executor.triton_kernels",
                    "executor.gpu_check", "executor.gpu_check_report", "executor.memory_plan", "executor.kernel_report",
                    "executor.preflight", "executor.device_check", "executor.fake_driver", "executor.decode_graph", "executor.model")
CALIBRATION_MODULES = ("calibration.cli", "calibration.bench", "calibration.measure", "calibration.device",
                       "calibration.contention", "calibration.estimators", "calibration.fit")


def run_blocked(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_blocking_works() -> None:
    done = run_blocked("import simpy")
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def test_executor_and_calibrate_import_without_simpy_or_serving_stack() -> None:
    code = "import importlib\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    done = run_blocked(code, *EXECUTOR_MODULES, *CALIBRATION_MODULES)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_gpu_check_help_without_simpy() -> None:
    code = ("import runpy\nsys.argv = ['executor.gpu_check', '--help']\n"
            "runpy.run_module('executor.gpu_check', run_name='__main__')")
    done = run_blocked(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--preflight" in done.stdout and "--device-run" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would start a calibration")
def test_yoda_calibrate_device_cuda_gets_to_the_device_without_simpy() -> None:
    """`yoda calibrate --device cuda` imports everything it needs and stops only at the missing GPU. (Called
    as a function: typer itself may import pydantic to parse flags; the device image's typer does not.)"""
    code = ("import typer\nfrom calibration.cli import calibrate_cmd\ntry:\n"
            "    calibrate_cmd(backend='executor', model='tiny', device='cuda', grid='quick', num_layers=None,\n"
            "                  weights=None, reps=None, clock='wall', out=__import__('pathlib').Path('unused'),\n"
            "                  as_json=True)\nexcept typer.Exit as e:\n    print('exit', e.exit_code)")
    done = run_blocked(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exit 2" in done.stdout and "CUDA is not available" in done.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_executor_imports_no_calibration_and_no_simulation_engine() -> None:
    """Arrows point one way: calibration sits on the executor. cli.py is the `yoda run` command (top of the
    stack: it picks the estimator and the simulator backend), so it is the one exception."""
    for path in sorted((ROOT / "executor").glob("*.py")):
        if path.name == "cli.py":
            continue
        bad = {m for m in _imports(path) if m.split(".")[0] in ("calibration", "simpy")
               or m in ("sim.gpu_instance", "sim.run", "sim.cluster")}
        assert not bad, f"{path.name} imports {sorted(bad)}"
