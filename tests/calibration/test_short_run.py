"""calibration.short_run, the device run's validation step, on the CPU with the bundled tiny profile: with
simpy it compares simulator and executor; without simpy (the device image) it says so and serves."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "calibration" / "profiles" / "cpu-tiny"
ARGS = ["validate", "--profile", str(PROFILE), "--model", "tiny", "--device", "cpu", "--num-layers", "2",
        "--requests", "4", "--rate", "4", "--max-prompt-len", "256", "--max-output-len", "4"]


def run(out: Path, block_simpy: bool) -> dict:
    prelude = "import sys; sys.modules['simpy'] = None\n" if block_simpy else ""
    code = prelude + "from calibration.short_run import main; sys.exit(main(sys.argv[1:]))"
    if not block_simpy:
        code = "import sys\n" + code
    done = subprocess.run([sys.executable, "-c", code, *ARGS, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    return summary


def test_validate_step_without_simpy_serves_and_says_so(tmp_path: Path) -> None:
    summary = run(tmp_path, block_simpy=True)
    assert summary["validate"].startswith("skipped: simpy not importable")
    assert summary["served"]["completed"] == 4 and summary["num_requests"] == 4


def test_validate_step_with_simpy_compares_simulator_and_executor(tmp_path: Path) -> None:
    summary = run(tmp_path, block_simpy=False)
    assert summary["validate"] == "done" and summary["num_requests"] == 4
    assert summary["median_ttft_abs_err"] is not None and (tmp_path / "validation.json").exists()
