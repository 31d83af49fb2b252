"""Numerical safety, atomic checkpoint writes, weights-only loading and secrets (issue 6, parts 1, 3, 5)."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from coattn.errors import CheckpointError as CheckpointLoadError
from coattn.errors import NonFiniteError
from coattn.io import atomic_torch_save
from coattn.io import load_checkpoint as safe_torch_load
from coattn.train.checkpoints import SafeCheckpointIO
from tests.conftest import REPO
from tests.reliability_helpers import subprocess_env, tiny_fit_args

WRITER = """
import sys, torch
from coattn.io import atomic_torch_save
big = torch.randn(6_000_000)  # 24 MB: each save takes a while
i = 0
while True:
    atomic_torch_save({"i": i, "w": big}, sys.argv[1])
    i += 1
    print(i, flush=True)
"""


def test_sigkill_during_checkpoint_writes_never_truncates(tmp_path):
    """Kill a process at random moments while it rewrites a 24 MB checkpoint: the file always loads."""
    target = tmp_path / "last.ckpt"
    for attempt in range(1):  # each attempt costs a Python + torch start-up
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=subprocess_env(),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # one complete save
        deadline = time.time() + 60
        while not list(tmp_path.glob(".coattn-ckpt-*.partial")) and time.time() < deadline:
            time.sleep(0.005)  # wait until the next save is under way...
        proc.send_signal(signal.SIGKILL)  # ...and kill it mid-write
        proc.wait(timeout=60)
        assert list(tmp_path.glob(".coattn-ckpt-*.partial")), "the kill did not land during a save"
        ckpt = safe_torch_load(target)
        assert ckpt["w"].numel() == 6_000_000 and ckpt["i"] >= 0
    # partial files of killed writers are swept by the next save
    atomic_torch_save({"i": -1}, target)
    assert not list(tmp_path.glob(".coattn-ckpt-*"))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"i": 1}, target)

    def broken(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"i": 2}, target)
    monkeypatch.undo()
    assert safe_torch_load(target) == {"i": 1} and not list(tmp_path.glob(".coattn-ckpt-*"))


def test_checkpoint_io_refuses_nan_weights_and_unsafe_files(tmp_path):
    import argparse

    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, path)
    with pytest.raises(NonFiniteError, match="NaN/Inf.*previous checkpoint is kept"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}, "epoch": 1}, path)
    assert io.load_checkpoint(path)["epoch"] == 0
    torch.save({"state_dict": {}, "x": argparse.Namespace(a=1)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointLoadError, match="argparse.Namespace"):
        io.load_checkpoint(tmp_path / "evil.ckpt", weights_only=False)  # weights_only=False is not honoured


def test_every_checkpoint_load_is_weights_only():
    """Audit: no torch.load in the package without weights_only=True (CLAP's fallback uses an allowlist
    unpickler with the same guarantee; coattn/encoders/clap_checkpoint.py)."""
    offenders = []
    for folder in ("coattn", "callbacks", "data_modules", "benchmarks"):
        for f in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if "torch.load(" in line and "weights_only=True" not in line and \
                        "pickle_module=_restricted_pickle()" not in line:
                    offenders.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_learned_temperature_stays_clamped_under_training():
    """A learning rate that pushes log(1/tau) far past log(100): tau stops at 0.01, the loss stays finite."""
    from coattn.loss import Temperature, nt_xent

    torch.manual_seed(0)
    temp = Temperature(0.07, learn=True)
    proj = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW([*temp.parameters(), *proj.parameters()], lr=5.0)
    x = torch.randn(16, 8)
    ids = torch.arange(16)
    for _ in range(30):
        e = torch.nn.functional.normalize(proj(x), dim=-1)
        loss = nt_xent(e @ e.t() * temp.scale, ids, ids)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert temp.log_scale.item() > math.log(100)  # the raw parameter ran away...
    assert temp.tau == pytest.approx(0.01)  # ...the temperature did not


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_clotho, tmp_path, monkeypatch,
                                                                                    capsys):
    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    poison = json.dumps({"class_path": "tests.reliability_helpers.PoisonBatch", "init_args": {"epoch": 1}})
    rc = main(["fit", *tiny_fit_args(tiny_clotho, epochs=2), f"--trainer.callbacks+={poison}",
               "--trainer.gradient_clip_val=1.0"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite training loss at global step 2 (epoch 1, batch 0)" in err
    assert "train/pair_loss" in err and "train/dual_loss = nan" in err
    last = tmp_path / "runs/demo_scratch/checkpoints/last.ckpt"
    assert f"last good checkpoint {last}" in err
    ckpt = safe_torch_load(last)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_no_secret_is_written_anywhere(tiny_clotho, tmp_path, monkeypatch):
    """Fake WANDB_API_KEY and augmentation key in the environment; fit + test with W&B offline; grep every file."""
    from coattn.cli import main

    keys = {"WANDB_API_KEY": "fakewandbkey-" + "7" * 28, "OPENAI_API_KEY": "sk-fakeaugmentkey-" + "3" * 24}
    for k, v in keys.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.chdir(tmp_path)
    wandb_logger = json.dumps({"class_path": "lightning.pytorch.loggers.WandbLogger",
                               "init_args": {"project": "secrets", "save_dir": "runs/demo_scratch"}})
    args = [*tiny_fit_args(tiny_clotho, steps=1), f"--trainer.logger+={wandb_logger}"]
    import wandb

    try:
        assert main(["fit", *args]) == 0
        assert main(["test", *args, "--ckpt_path", "last"]) == 0
    finally:
        if wandb.run is not None:
            wandb.finish()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "coattn_config.yaml" for p in files)
    leaks = [str(p) for p in files for v in keys.values() if v.encode() in p.read_bytes()]
    assert not leaks, leaks
