"""coattn data-check on a Clotho-layout dataset with planted faults; the loaders on the same faults."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coattn.tools.data_check import main
from coattn.tools.synth import main as synth
from data_modules import ClothoDataModule

HEADER = ["file_name", *(f"caption_{k}" for k in range(1, 6))]
CAPS = ["one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    """4 good development clips + one of every fault; validation/evaluation stay clean."""
    base = tmp_path_factory.mktemp("faulty")
    root = base / "clotho"
    synth([str(root), "--n-train", "4", "--n-val", "2", "--n-eval", "2", "--seconds", "1"])
    dev = root / "development"
    sr = 44100
    sf.write(dev / "silent.wav", np.zeros(sr, np.float32), sr, subtype="PCM_16")
    sf.write(dev / "zero length.wav", np.zeros(0, np.float32), sr, subtype="PCM_16")
    nan = np.full(sr, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(dev / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(dev / "8k.wav", np.full(8000, 0.1, np.float32), 8000, subtype="PCM_16")
    sf.write(dev / "surround.wav", np.full((sr, 6), 0.1, np.float32), sr, subtype="PCM_16")
    sf.write(dev / "short.wav", np.full(sr // 10, 0.1, np.float32), sr, subtype="PCM_16")
    (dev / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (dev / "unlisted.wav").write_bytes((dev / "development_00000.wav").read_bytes())
    outside = base / "outside.wav"
    outside.write_bytes((dev / "development_00000.wav").read_bytes())
    os.symlink(outside, dev / "link out.wav")
    os.symlink(dev / "development_00001.wav", dev / "link in.wav")  # inside the root: fine
    with open(root / "clotho_captions_development.csv", "a", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        for name in ("silent.wav", "zero length.wav", "nan.wav", "8k.wav", "surround.wav", "short.wav",
                     "corrupt.wav", "absent.wav", "../validation/validation_00000.wav", str(outside),
                     "link out.wav", "link in.wav"):
            w.writerow([name, *CAPS])
        w.writerow(["development_00002.wav", "", *CAPS[1:]])  # line 18: duplicate row, empty caption
    return root


def test_report_finds_every_planted_fault(faulty, tmp_path, capsys):
    report = tmp_path / "r" / "check.json"
    assert main(["clotho", str(faulty), "--report", str(report), "--workers", "1"]) == 1  # errors -> 1
    printed = capsys.readouterr().out
    rep = json.loads(report.read_text())
    dev = rep["splits"]["train"]
    found = {k: sorted(f["file"] for f in v) for k, v in dev["problems"].items()}
    assert found == {
        "unsafe_name": sorted(["../validation/validation_00000.wav", str(faulty.parent / "outside.wav"),
                               "link out.wav"]),
        "unreadable": ["corrupt.wav"],
        "zero_length": ["zero length.wav"],
        "nan_inf": ["nan.wav"],
        "missing": ["absent.wav"],
        "silent": ["silent.wav"],
        "unusual_sample_rate": ["8k.wav"],
        "unusual_channels": ["surround.wav"],
        "very_short": ["short.wav"],
        "duplicate_rows": ["development_00002.wav"],
        "empty_captions": ["development_00002.wav"],
        "unlisted_audio": ["unlisted.wav"],
        # the 12 planted rows share the captions one..five: one finding per caption, at its first clip
        "shared_captions": ["../validation/validation_00000.wav"] * 5,
    }
    assert dev["problems"]["empty_captions"][0]["line"] == 18
    assert dev["stats"]["sample_rates"] == {"8000": 1, "44100": 10}
    assert rep["splits"]["val"]["problems"] == {} and rep["splits"]["test"]["problems"] == {}
    assert rep["exclude"] == ["corrupt.wav", "nan.wav", "zero length.wav"]
    assert "unsafe_name (E)" in printed and "3 clips to exclude" in printed
    exclude = report.with_name("check.exclude.txt")
    assert exclude.read_text().splitlines()[1:] == rep["exclude"]
    # the same scan with 2 worker processes gives the same findings
    assert main(["clotho", str(faulty), "--report", str(tmp_path / "r2.json"), "--workers", "2"]) == 1
    assert json.loads((tmp_path / "r2.json").read_text())["splits"]["train"]["problems"] == dev["problems"]


def test_loaders_reject_unsafe_names_and_survive_bad_clips(faulty, tmp_path):
    dm = ClothoDataModule(str(faulty), batch_size=4, num_workers=2, report_dir=str(tmp_path))
    split = dm.split("train")
    assert not {"link out.wav", "../validation/validation_00000.wav"} & set(split.fnames)
    assert len(split.rejected) == 3 and split.missing == ["absent.wav"]
    assert (tmp_path / "rejected_train.txt").read_text().count("\n") == 3
    assert "link in.wav" in split.fnames
    # bad clips become flagged silence inside 2 worker processes, and are counted across them
    batches = list(dm.train_dataloader())
    bad = {f for b in batches for f, ok in zip(b["fnames"], b["valid"].tolist()) if not ok}
    assert bad <= {"corrupt.wav", "zero length.wav", "nan.wav"} and bad
    assert dm.skipped_clips["train"] == sum((~b["valid"]).sum().item() for b in batches)
    # with the data-check exclusion list nothing is skipped at load time
    main(["clotho", str(faulty), "--report", str(tmp_path / "c.json"), "--splits", "train", "--workers", "1"])
    clean = ClothoDataModule(str(faulty), batch_size=4, exclude_file=str(tmp_path / "c.exclude.txt"),
                             report_dir=str(tmp_path))
    assert all(b["valid"].all() for b in clean.train_dataloader())
    assert sorted(clean.split("train").excluded) == ["corrupt.wav", "nan.wav", "zero length.wav"]
