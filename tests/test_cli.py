"""The user's commands end to end on tiny data: fit, test on the checkpoint, print_config."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from coattn.cli import main
from coattn.metrics import retrieval_metrics
from tests.conftest import REPO

DEMO = str(REPO / "experiments" / "demo_scratch.yaml")


def tiny_args(root) -> list[str]:
    """The demo config shrunk to seconds: 2 training steps, tiny batches, no workers."""
    return ["--config", DEMO, f"--data.init_args.root={root}", "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4", "--data.init_args.num_workers=0",
            "--model.evaluation.bootstrap=50", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]


@pytest.mark.slow
def test_fast_dev_run(tiny_clotho, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tiny_clotho), "--trainer.fast_dev_run=1"]) == 0


@pytest.mark.slow
def test_fit_then_test_on_checkpoint(tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *tiny_args(tiny_clotho)])
    ckpt = tmp_path / "runs/demo_scratch/checkpoints/best.ckpt"
    assert ckpt.is_file() and (tmp_path / "runs/demo_scratch/checkpoints/last.ckpt").is_file()
    assert (tmp_path / "runs/demo_scratch/tokenizer.json").is_file()
    capsys.readouterr()
    main(["test", *tiny_args(tiny_clotho), f"--ckpt_path={ckpt}"])
    printed = capsys.readouterr().out
    assert "mAP@10" in printed and "chance" in printed
    out = tmp_path / "runs/demo_scratch/results/test"
    metrics = json.loads((out / "metrics.json").read_text())
    npz = np.load(out / "scores.npz")
    assert npz["scores"].shape == (20, 4)  # 4 evaluation clips x 5 captions
    import torch
    again = retrieval_metrics(torch.from_numpy(npz["scores"]), torch.from_numpy(npz["caption_clip"]))
    assert again["t2a_mAP@10"] == pytest.approx(metrics["metrics"]["t2a_mAP@10"])
    header = (out / "submission_t2a.csv").read_text().splitlines()[0]
    assert header.startswith("caption,fname_1")


def test_print_config_round_trip(tmp_path):
    """--print_config gives the full config; feeding it back parses to the same config."""
    first = subprocess.run([sys.executable, "-m", "coattn.cli", "fit", "--config", DEMO, "--print_config"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    cfg = yaml.safe_load(first)
    assert cfg["model"]["cascade"]["init_args"]["kind"] == "iterating"
    assert cfg["data"]["class_path"] == "data_modules.ClothoDataModule"
    assert "max_epochs" in cfg["trainer"]
    (tmp_path / "printed.yaml").write_text(first)
    second = subprocess.run([sys.executable, "-m", "coattn.cli", "fit", "--config", "printed.yaml",
                             "--print_config"], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert yaml.safe_load(second) == cfg


def test_cli_override_and_bad_key(tmp_path):
    out = subprocess.run([sys.executable, "-m", "coattn.cli", "fit", "--config", DEMO, "--print_config",
                          "--model.cascade.init_args.depth=4", "--model.cascade.init_args.kind=stacking"],
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    cascade = yaml.safe_load(out)["model"]["cascade"]["init_args"]
    assert cascade["depth"] == 4 and cascade["kind"] == "stacking"
    bad = subprocess.run([sys.executable, "-m", "coattn.cli", "fit", "--config", DEMO, "--print_config",
                          "--model.cascade.init_args.kind=sideways"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "kind" in bad.stderr


@pytest.mark.slow
def test_fit_on_an_audiocaps_layout(tiny_clotho, tmp_path, monkeypatch):
    """The same command trains on an AudioCaps-layout copy (stand-in audio: the synthetic clips)."""
    import csv
    import shutil

    root = tmp_path / "audiocaps"
    splits = {"train": "development", "val": "validation", "test": "evaluation"}
    for split, clotho_split in splits.items():
        (root / "audio" / split).mkdir(parents=True)
        rows = list(csv.DictReader(open(tiny_clotho / f"clotho_captions_{clotho_split}.csv", encoding="utf-8")))
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
            for i, row in enumerate(rows):
                yid = f"yt{clotho_split[:3]}{i:03d}"
                shutil.copy(tiny_clotho / clotho_split / row["file_name"], root / "audio" / split / f"{yid}.wav")
                for j in range(1 if split == "train" else 5):  # AudioCaps: 1 caption per training clip
                    w.writerow([f"{i}{j}", yid, 30, row[f"caption_{j + 1}"]])
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_args(tiny_clotho) if not a.startswith("--data.init_args.root")]
    assert main(["fit", *args, "--data=data_modules.AudioCapsDataModule", f"--data.init_args.root={root}",
                 "--trainer.fast_dev_run=1"]) == 0
