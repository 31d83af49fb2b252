"""make demo's data step: a data root made earlier with another number of training scenes (REAL_TRAIN_SCENES)
stops in one line naming the file and what to do, instead of resuming runs on other data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_data(root: Path, scenes: int | str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "demo-real-data", f"REAL_DATA={root}",
                           f"REAL_TRAIN_SCENES={scenes}", f"PY={sys.executable}", "COATTN=false"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_demo_data_with_another_number_of_training_scenes_is_one_line(tmp_path):
    meta = {f"development/development_{i:05d}.wav": {} for i in range(3)}
    meta.update({"validation/validation_00000.wav": {}, "evaluation/evaluation_00000.wav": {}})
    (tmp_path / "synth_metadata.json").write_text(json.dumps(meta))
    same = make_data(tmp_path, 3)
    assert same.returncode == 0, same.stderr  # the root the demo asks for: reused, nothing composed
    other = make_data(tmp_path, 1600)
    assert other.returncode != 0
    lines = [ln for ln in other.stderr.splitlines() if ln.startswith("demo:")]
    assert lines == [f"demo: {tmp_path}/synth_metadata.json holds 3 training scenes, REAL_TRAIN_SCENES is 1600: "
                     "run make clean-demo (or make demo REAL_TRAIN_SCENES=3)"]
    assert "Traceback" not in other.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("scenes", ["many", "-5", "1.5", ""])
def test_demo_data_with_a_bad_number_of_training_scenes_is_one_line(tmp_path, scenes):
    bad = make_data(tmp_path, scenes)  # before anything is read or composed (COATTN=false would fail otherwise)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[0] == (f"demo: REAL_TRAIN_SCENES={scenes}: expected a whole number of "
                                                  "training scenes (default 1600)")
    assert "Traceback" not in bad.stderr and not (tmp_path / "synth_metadata.json").exists()
