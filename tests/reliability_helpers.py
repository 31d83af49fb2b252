"""Helpers of the reliability tests: tiny CLI arguments, subprocess runs, a callback that parks a run."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch import Callback

from tests.conftest import REPO

DEMO = str(REPO / "experiments" / "demo_scratch.yaml")


def tiny_fit_args(root, epochs: int = 1, steps: int = 2, freeze_audio: bool = True) -> list[str]:
    """The demo config shrunk: 4-item batches, no workers, `steps` steps per epoch, HTS-AT frozen (fast)."""
    return ["--config", DEMO, f"--data.init_args.root={root}", "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4", "--data.init_args.num_workers=0", "--model.evaluation.bootstrap=50",
            f"--model.audio_encoder.init_args.freeze={str(freeze_audio).lower()}", "--model.optim.warmup_steps=2",
            f"--trainer.max_epochs={epochs}", f"--trainer.limit_train_batches={steps}",
            "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1", "--trainer.accelerator=cpu"]


def coattn_cmd() -> list[str]:
    script = Path(sys.executable).parent / "coattn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "coattn.cli"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(extra)
    return env


@contextmanager
def one_thread():
    """Run in-process work with 1 torch thread (as the subprocesses, OMP_NUM_THREADS=1): same float sums."""
    import torch

    n = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        torch.use_deterministic_algorithms(det)  # trainer.deterministic leaves it switched on


def read_metrics(csv_path: Path) -> dict[int, dict[str, float]]:
    """Validation metrics per epoch from a CSVLogger metrics.csv."""
    out: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            vals = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
            if vals:
                out.setdefault(int(row["epoch"]), {}).update(vals)
    return out


class ParkAt(Callback):
    """Test helper: after batch ``batch`` of epoch ``epoch`` write ``marker`` and sleep (to be SIGKILLed)."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 0, max_wait_s: float = 300.0):
        self.marker, self.epoch, self.batch, self.max_wait_s = marker, epoch, batch, max_wait_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(f"epoch {trainer.current_epoch} batch {batch_idx}\n")
            deadline = time.time() + self.max_wait_s  # never hang forever if nobody kills us
            while time.time() < deadline:
                time.sleep(0.2)
            raise SystemExit(3)


def run_until_marker(args: list[str], cwd: Path, marker: Path, timeout: float = 300.0,
                     **popen: object) -> subprocess.Popen:
    """Start ``coattn <args>`` and return once ``marker`` exists (the process still running)."""
    log = open(cwd / "killed_run.log", "w")
    proc = subprocess.Popen([*coattn_cmd(), *args], cwd=cwd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                            **popen)
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            log.close()
            raise AssertionError(f"run ended (rc {proc.returncode}) before {marker}:\n"
                                 + (cwd / "killed_run.log").read_text()[-4000:])
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no {marker} within {timeout} s")
        time.sleep(0.2)
    log.close()
    return proc


class WaitForSigterm(Callback):
    """Test helper: after batch ``batch`` of epoch ``epoch`` write ``marker`` and wait until the process
    receives SIGTERM (Lightning's ``trainer.received_sigterm``), then let the loop go on."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 0, max_wait_s: float = 300.0):
        self.marker, self.epoch, self.batch, self.max_wait_s = marker, epoch, batch, max_wait_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            Path(self.marker).write_text(f"epoch {trainer.current_epoch} batch {batch_idx}\n")
            deadline = time.time() + self.max_wait_s  # never hang forever if nobody signals us
            while not trainer.received_sigterm and time.time() < deadline:
                time.sleep(0.05)


class PoisonBatch(Callback):
    """Test helper: fill the audio of batch ``batch`` of epoch ``epoch`` with NaN (a bad input, not a bad model)."""

    def __init__(self, epoch: int = 1, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            batch["audio"].fill_(float("nan"))
