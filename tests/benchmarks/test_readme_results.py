"""The README's goodput section is generated from the committed benchmark JSON: the two must agree."""
import json
from pathlib import Path

import pytest

from benchmarks.readme_results import END, SPEED_END, SPEED_START, START, render, render_readme, render_speed, splice

ROOT = Path(__file__).resolve().parents[2]
JSON = ROOT / "results" / "goodput_vs_baselines.json"


def test_the_readme_sections_are_the_committed_json_rendered():
    readme = (ROOT / "README.md").read_text()
    speed = json.loads((ROOT / "results" / "sim_speed.json").read_text())
    assert render_readme(readme, json.loads(JSON.read_text()), speed) == readme, (
        "README results differ from results/*.json: run python -m benchmarks.readme_results")


def test_the_speed_paragraph_carries_the_side_by_side_ratios():
    speed = json.loads((ROOT / "results" / "sim_speed.json").read_text())
    text = render_speed(speed)
    assert text.startswith(SPEED_START) and text.endswith(SPEED_END)
    for r in speed["rows"]:
        if r["trace"] == "mooncake_conversation" and r["simulator"] == "ours" and r.get("vs_baseline"):
            assert f"{r['vs_baseline']:.2f}x the code of" in text


def test_a_changed_goodput_changes_the_section_and_its_ratios():
    data = json.loads(JSON.read_text())
    before = render(data, "x.md")
    row = next(r for r in data["rows"] if r["policy"] == "yoda" and r["admission"] == "deadline" and not r["ablation"])
    row["goodput_rps"] *= 2
    after = render(data, "x.md")
    assert before != after and f"{row['goodput_rps']:.3f} [" in after


def test_a_loss_is_named_and_a_readme_without_markers_is_refused():
    data = json.loads(JSON.read_text())
    for r in data["rows"]:  # every Yoda cell at a tenth: it loses everywhere
        if r["policy"] == "yoda" and not r["ablation"]:
            r["goodput_rps"] /= 10
    text = render(data, "x.md")
    assert text.startswith(START) and text.endswith(END) and "Yoda loses: nowhere" not in text
    with pytest.raises(ValueError, match="markers"):
        splice("# README without the section\n", text)
