"""W&B offline: the run folder holds the nested config, provenance, attention maps and the
retrieval-examples table; metrics come back through the CSVLogger; a resumed fit continues the run."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from coattn.cli import main
from tests.conftest import REPO
from tests.wandb_offline import artifacts as wandb_artifacts
from tests.wandb_offline import config as wandb_config
from tests.wandb_offline import run_id as wandb_run_id

EXP = REPO / "experiments"
FAKE_KEY = "not-a-real-key-0123456789abcdef"


def demo_wandb_args(root) -> list[str]:
    return ["--config", str(EXP / "demo_scratch.yaml"), "--config", str(EXP / "demo_wandb.yaml"),
            f"--data.init_args.root={root}", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
            "--data.init_args.num_workers=0", "--model.evaluation.bootstrap=0", "--trainer.limit_train_batches=1",
            "--trainer.log_every_n_steps=1"]


def finish_wandb():
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.mark.slow
def test_offline_run_folder_and_resume(tiny_clotho, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # must never be written anywhere
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging stays in tmp
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    try:
        main(["fit", *demo_wandb_args(tiny_clotho), "--trainer.max_epochs=1"])
    finally:
        finish_wandb()
    runs = sorted((tmp_path / "runs/demo/wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = runs[0]
    files = run / "files"
    # wandb-core writes the binary run file asynchronously: give a loaded machine time to close it
    deadline = time.time() + 60
    while not list(run.glob("run-*.wandb")) and time.time() < deadline:
        time.sleep(0.5)
    log_file = next(run.glob("run-*.wandb"), None)
    assert log_file is not None, f"no run-*.wandb in {run}: {sorted(p.name for p in run.iterdir())}"

    # nested config (the resolved LightningCLI config) + provenance in wandb.config
    cfg = wandb_config(log_file)
    assert cfg["model"]["cascade"]["init_args"]["kind"] == "iterating"
    assert cfg["data"]["class_path"] == "data_modules.ClothoDataModule"
    assert cfg["trainer"]["max_epochs"] == 1 and cfg["seed_everything"] == 0
    assert len(cfg["run_info"]["git"]["sha"]) == 40
    assert cfg["run_info"]["packages"]["lightning"] and cfg["run_info"]["packages"]["torch"]
    # the YAML under a name that does not clash with W&B's own config.yaml, provenance on top
    saved = (files / "coattn_config.yaml").read_text()
    assert saved.startswith("# coattn fit config") and "# git: " in saved and "lightning==" in saved
    assert json.loads((files / "run_info.json").read_text())["git"]["sha"] == cfg["run_info"]["git"]["sha"]

    # media: attention maps (images) and the retrieval-examples table with audio players
    images = list((files / "media/images/val").glob("attention_maps_*.png"))
    assert len(images) == 2  # 2 examples, last epoch
    tables = list((files / "media/table/val").glob("retrieval_examples_*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["epoch", "query", "rank", "clip", "score", "hit", "true_clip", "true_rank", "audio"]
    assert len(table["data"]) == 3 * 4  # 3 queries x top 5 of only 4 validation clips
    assert any(row[5] for row in table["data"])  # every query's own clip is among the 4: some hits
    # the table with its wandb.Audio players goes out as a run_table artifact (staged outside the run folder)
    tables = [a for a in wandb_artifacts(log_file) if a["type"] == "run_table" and "retrieval_examples" in a["name"]]
    assert tables
    audio = {p: f for p, f in tables[0]["entries"].items() if p.startswith("media/audio/") and p.endswith(".wav")}
    assert len(audio) == 4  # the 4 validation clips, each stored once
    assert all(Path(f).read_bytes()[:4] == b"RIFF" for f in audio.values())

    # files beside the CSV logs (write_files: true in demo_wandb.yaml)
    log_dir = tmp_path / "runs/demo/logs/version_0"
    assert len(list((log_dir / "attention_maps").glob("val_epoch000_ex*.png"))) == 2
    examples = json.loads((log_dir / "retrieval_examples/val_epoch000.json").read_text())
    assert len(examples["queries"]) == 3 and len(examples["queries"][0]["top"]) == 4

    # metrics through the CSVLogger (an offline run has no wandb-summary.json)
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    assert any(r.get("val/t2a_mAP@10") for r in rows)
    assert any(r.get("train/loss") for r in rows)

    # the checkpoint knows its W&B run; a resumed fit continues it
    first_id = wandb_run_id(log_file)
    ckpt = tmp_path / "runs/demo/checkpoints/last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["wandb_run_id"] == first_id
    try:
        # max_epochs already reached: restores, starts the logger, trains nothing (cheap)
        main(["fit", *demo_wandb_args(tiny_clotho), "--trainer.max_epochs=1", f"--ckpt_path={ckpt}"])
    finally:
        finish_wandb()
    runs = sorted((tmp_path / "runs/demo/wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {first_id}
    for _ in range(50):  # wandb-core may still be flushing the file just after finish()
        if wandb_run_id(next(runs[1].glob("run-*.wandb"))) is not None:
            break
        time.sleep(0.2)
    assert wandb_run_id(next(runs[1].glob("run-*.wandb"))) == first_id

    # no secret anywhere in what the runs wrote
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_live_wandb_logger_gets_an_absolute_folder(tmp_path, monkeypatch):
    """wandb-core resolves relative folders against the first run's working directory: a second
    in-process run after a chdir must hand it an absolute one (the suite's order caught this)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from coattn.train.runs import absolute_wandb_dirs

    monkeypatch.chdir(tmp_path)
    lg = WandbLogger(save_dir="runs/demo", project="p", offline=True)
    other = CSVLogger("runs/demo")
    absolute_wandb_dirs([lg, other])
    assert lg.save_dir == str(tmp_path / "runs/demo") and lg._wandb_init["dir"] == lg.save_dir
    assert other.save_dir == "runs/demo"  # other loggers untouched
