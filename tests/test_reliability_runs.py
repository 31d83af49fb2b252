"""Runs that lost work (issue 11, items 1, 2, 5, 6, 7, 9): ``--ckpt_path last`` under ``COATTN_RUN_DIR``, a
fresh start over another run, SIGTERM, two fits in one folder, resuming with other epoch settings, a
fit with nothing left to train, ``--ckpt_path best`` in a new process."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from coattn.cli import main
from tests.reliability_helpers import one_thread, read_metrics, run_until_marker, tiny_fit_args

RUN = "runs/x"  # COATTN_RUN_DIR of these tests: the demo config's outputs move there


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def finished_run(tiny_clotho, tmp_path_factory):
    """A folder holding ``runs/x`` after `COATTN_RUN_DIR=runs/x coattn fit` (1 epoch of 2 steps)."""
    base = tmp_path_factory.mktemp("finished")
    cwd, env = os.getcwd(), os.environ.get("COATTN_RUN_DIR")
    os.chdir(base)
    os.environ["COATTN_RUN_DIR"] = RUN
    try:
        assert main(["fit", *tiny_fit_args(tiny_clotho)]) == 0
    finally:
        os.chdir(cwd)
        os.environ.pop("COATTN_RUN_DIR") if env is None else os.environ.__setitem__("COATTN_RUN_DIR", env)
    return base


@pytest.fixture
def run_copy(finished_run, tmp_path, monkeypatch):
    """A private copy of the finished run, as the working directory, with COATTN_RUN_DIR set."""
    shutil.copytree(finished_run / "runs", tmp_path / "runs", symlinks=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COATTN_RUN_DIR", RUN)
    return tmp_path


# ---- 1. --ckpt_path last after the outputs moved; never a silent restart over a run -------------------
@pytest.mark.slow
def test_ckpt_path_last_resumes_the_run_dir_of_coattn_run_dir(run_copy, tiny_clotho, capsys):
    capsys.readouterr()
    assert main(["fit", *tiny_fit_args(tiny_clotho, epochs=2), "--ckpt_path", "last"]) == 0
    assert f"--ckpt_path last -> {RUN}/checkpoints/last.ckpt" in capsys.readouterr().err
    last = _state(run_copy / RUN / "checkpoints/last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 4
    assert sorted(read_metrics(run_copy / RUN / "logs/version_1/metrics.csv")) == [1]  # only the epoch it added
    assert not (run_copy / "runs/demo_scratch").exists()


@pytest.mark.slow
@pytest.mark.parametrize("start", ["scratch", "other_checkpoint"])
def test_a_fresh_start_over_a_run_is_refused(start, run_copy, tiny_clotho, capsys):
    before = (run_copy / RUN / "checkpoints/last.ckpt").read_bytes()
    extra = []
    if start == "other_checkpoint":
        shutil.copy(run_copy / RUN / "checkpoints/best.ckpt", run_copy / "elsewhere.ckpt")
        extra = ["--ckpt_path", "elsewhere.ckpt"]
    capsys.readouterr()
    assert main(["fit", *tiny_fit_args(tiny_clotho), *extra]) == 1
    err = capsys.readouterr().err
    assert f"coattn: error: {RUN}/checkpoints already holds the checkpoints of a run (best.ckpt, last.ckpt)" in err
    assert "pass --ckpt_path last to resume that run, or choose another folder" in err
    assert (run_copy / RUN / "checkpoints/last.ckpt").read_bytes() == before


# ---- 6 and 7. a resume that changes the epoch; a fit with nothing left to do -----------------------
@pytest.mark.slow
def test_resume_with_another_batch_size_says_what_changes(run_copy, tiny_clotho, capsys):
    capsys.readouterr()
    assert main(["fit", *tiny_fit_args(tiny_clotho, epochs=2), "--data.init_args.batch_size=2",
                 "--ckpt_path", "last"]) == 0
    err = capsys.readouterr().err
    assert "coattn: warning: resuming" in err and "with settings that change the epoch: " \
           "data.init_args.batch_size 4 -> 2" in err


@pytest.mark.slow
def test_resuming_a_finished_run_says_nothing_was_trained(run_copy, tiny_clotho, capsys):
    capsys.readouterr()
    assert main(["fit", *tiny_fit_args(tiny_clotho, epochs=1), "--ckpt_path", "last"]) == 0
    assert "coattn: warning: this fit ran no training step: the run already reached trainer.max_epochs=1" in \
        capsys.readouterr().err


# ---- 9. --ckpt_path best in a new process --------------------------------------------------------------
@pytest.mark.slow
def test_test_ckpt_path_best_uses_the_best_checkpoint_of_the_run(run_copy, tiny_clotho, capsys):
    capsys.readouterr()
    assert main(["test", *tiny_fit_args(tiny_clotho), "--model.evaluation.bootstrap=0", "--ckpt_path", "best"]) == 0
    assert f"--ckpt_path best -> {RUN}/checkpoints/best.ckpt" in capsys.readouterr().err
    metrics = json.loads((run_copy / RUN / "results/test/metrics.json").read_text())
    assert metrics["extra"]["ckpt_path"] == f"{RUN}/checkpoints/best.ckpt"  # the copy's, not the original's


# ---- 2 and 5. SIGTERM mid-epoch; a second fit into the folder of a running one ---------------------------
EPOCHS, STEPS = 2, 3


def _deterministic(root) -> list[str]:
    return [*tiny_fit_args(root, epochs=EPOCHS, steps=STEPS, freeze_audio=False), "--trainer.deterministic=true"]


@pytest.fixture(scope="module")
def parked(tiny_clotho, tmp_path_factory):
    """A `coattn fit` in its own process group, with 2 DataLoader workers, waiting for SIGTERM after the first
    batch of its second epoch (``last.ckpt`` then holds the first epoch)."""
    cwd = tmp_path_factory.mktemp("parked")
    marker = cwd / "parked"
    wait = json.dumps({"class_path": "tests.reliability_helpers.WaitForSigterm",
                       "init_args": {"marker": str(marker), "epoch": 1, "batch": 0}})
    proc = run_until_marker(["fit", *_deterministic(tiny_clotho), "--data.init_args.num_workers=2",
                             f"--trainer.callbacks+={wait}"], cwd, marker, start_new_session=True)
    yield cwd, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_a_second_fit_in_a_running_fits_folder_is_refused(parked, tiny_clotho, monkeypatch, capsys):
    cwd, proc = parked
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    assert main(["fit", *tiny_fit_args(tiny_clotho)]) == 1
    err = capsys.readouterr().err
    assert (f"coattn: error: run folder '{cwd}/runs/demo_scratch' is in use by another `coattn fit` "
            f"(pid {proc.pid} on ") in err
    assert proc.poll() is None  # the running fit goes on


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_exits_143_and_resume_is_exact(parked, tiny_clotho, tmp_path, monkeypatch):
    """SIGTERM to the whole process group (the main process and its DataLoader workers): one line, exit 143,
    a mid-epoch last.ckpt; `--ckpt_path last` then ends exactly where an uninterrupted run ends."""
    cwd, proc = parked
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    log = (cwd / "killed_run.log").read_text()
    assert "Traceback" not in log and "DataLoader worker" not in log, log[-3000:]
    stopped = [line for line in log.splitlines() if line.startswith("coattn: stopped by SIGTERM")]
    assert len(stopped) == 1 and "at global step 4 (epoch 1, batch 0): saved " in stopped[0], log[-3000:]
    last = cwd / "runs/demo_scratch/checkpoints/last.ckpt"
    assert _state(last)["global_step"] == 4 and _state(last)["epoch"] == 1  # mid-epoch: 1 of the 3 batches

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    with one_thread():
        monkeypatch.chdir(uninterrupted)
        assert main(["fit", *_deterministic(tiny_clotho)]) == 0
        monkeypatch.chdir(cwd)
        assert main(["fit", *_deterministic(tiny_clotho), "--ckpt_path", "last"]) == 0
    a, b = _state(uninterrupted / "runs/demo_scratch/checkpoints/last.ckpt"), _state(last)
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert read_metrics(uninterrupted / "runs/demo_scratch/logs/version_0/metrics.csv")[1] == \
        read_metrics(cwd / "runs/demo_scratch/logs/version_1/metrics.csv")[1]
