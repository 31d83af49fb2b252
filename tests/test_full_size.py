"""The paper's configurations at their real size, on CPU: `coattn fit` (2 training steps + a validation)
then `coattn test`, for experiments/clotho_iterating.yaml and experiments/audiocaps_iterating.yaml.

The pretrained parts are stand-ins with the real architectures and file layouts, random weights
(benchmarks/standins.py): a LAION-CLAP checkpoint (HTS-AT tiny) and a roberta-base-sized folder
with a BPE tokenizer trained on the real Clotho captions, pointed to by the configs' own keys. Only
the data root, batch sizes, step limits, workers, logging interval and checkpoint writing are
overridden (a full checkpoint with optimizer state is ~2.3 GB); precision stays the configs'
bf16-mixed (CPU autocast).
Each config runs in one subprocess that prints its peak RSS and the time of one training step.
The test asserts behaviour (it trains, the loss is finite, the files are written), never time.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.conftest import REPO, SHARED_DATA
from tests.reliability_helpers import subprocess_env

pytestmark = pytest.mark.slow
CLOTHO = SHARED_DATA / "clotho"
AUDIOCAPS = SHARED_DATA / "audiocaps" / "v1"

# Runs `coattn fit` then `coattn test --untrained true` in this one process; prints peak RSS and the
# wall time between the first two optimizer steps (one full training step: data, forward, backward, AdamW).
DRIVER = """
import os, resource, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
steps = []
register_optimizer_step_post_hook(lambda *a: steps.append(time.perf_counter()))
from coattn.cli import main
args = sys.argv[1:]
t0 = time.perf_counter()
rc = main(["fit", *args])
t1 = time.perf_counter()
rss_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
if rc == 0:
    rc = main(["test", *args, "--untrained=true"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
step = steps[1] - steps[0] if len(steps) > 1 else float("nan")
print(f"FULL-SIZE fit {t1 - t0:.1f} s (one training step {step:.1f} s, {len(steps)} steps), "
      f"test {time.perf_counter() - t1:.1f} s; peak RSS fit {rss_fit:.2f} GB, fit+test {rss:.2f} GB; "
      f"load average {os.getloadavg()[0]:.1f}", flush=True)
sys.exit(rc)
"""


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> tuple[Path, Path]:
    """(LAION-CLAP checkpoint, roberta-base folder), random weights, real layouts: built once (1.1 GB)."""
    if not CLOTHO.is_dir():
        pytest.fail(f"the real Clotho files are missing: {CLOTHO}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from standins import build
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return build(tmp_path_factory.mktemp("standins"))


def no_checkpoint_overlay(config: Path, out: Path) -> Path:
    """The config's own callbacks minus ModelCheckpoint, and checkpointing off (a second --config)."""
    trainer = yaml.safe_load(config.read_text())["trainer"]
    callbacks = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    out.write_text(yaml.safe_dump({"trainer": {"enable_checkpointing": False, "callbacks": callbacks}}))
    return out


def run_config(name: str, root: Path, standins: tuple[Path, Path], cwd: Path, capsys) -> Path:
    """fit + test of experiments/<name> in one subprocess; prints its report (even without -s); returns its
    run folder."""
    clap, roberta = standins
    config = REPO / "experiments" / name
    args = ["--config", str(config), "--config", str(no_checkpoint_overlay(config, cwd / "no_ckpt.yaml")),
            f"--model.audio_encoder.init_args.checkpoint={clap}", f"--model.text_encoder.init_args.model={roberta}",
            f"--data.init_args.root={root}", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=8",
            "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1", "--model.evaluation.bootstrap=50"]
    env = subprocess_env()  # 1 thread (OMP_NUM_THREADS=1): on a shared 2-core machine 2 threads spin-wait, ~3x slower
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)
    report = [line for line in proc.stdout.splitlines() if line.startswith("FULL-SIZE")]
    with capsys.disabled():
        print(f"\n{name}: {report[-1] if report else 'no report'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "runs" / name[:-5]


def check_run(run: Path, n_captions: int, n_clips: int) -> None:
    rows = list(csv.DictReader(open(run / "logs" / "version_0" / "metrics.csv")))  # the fit's (version_1: test)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(r.get("val/t2a_mAP@10") for r in rows)  # the validation ran and was logged
    assert not list(run.rglob("*.ckpt"))  # checkpoint writing was off
    out = run / "results" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["t2a_mAP@10"] >= 0 and metrics["extra"]["cascade"] == "iterating"
    scores = np.load(out / "scores.npz")["scores"]
    assert scores.shape == (n_captions, n_clips) and np.isfinite(scores).all()
    assert (out / "submission_t2a.csv").is_file()


def test_clotho_iterating_full_size(standins, tmp_path, capsys):
    """The 7 real Clotho evaluation clips with their real caption rows, as every split."""
    clips = sorted(p.name for p in (CLOTHO / "audio_sample").glob("*.wav"))
    with open(CLOTHO / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if r[0] in clips]
    assert len(clips) == len(rows) == 7
    root = tmp_path / "clotho"
    for folder in ("development", "validation", "evaluation"):
        (root / folder).mkdir(parents=True)
        for name in clips:
            shutil.copy(CLOTHO / "audio_sample" / name, root / folder / name)
        with open(root / f"clotho_captions_{folder}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    run = run_config("clotho_iterating.yaml", root, standins, tmp_path, capsys)
    check_run(run, 35, 7)


def test_audiocaps_iterating_full_size(standins, tmp_path, capsys):
    """8 training clips (1 caption each) and 2 + 2 evaluation clips (5 captions each) under their real
    AudioCaps ids and CSV rows; the audio is synthesised (10 s, 32 kHz)."""
    root = tmp_path / "audiocaps"
    (root / "audio").mkdir(parents=True)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        with open(AUDIOCAPS / f"{split}.csv", newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows, ids = [], []
            for r in reader:  # the first n clips of the file, every caption row of each
                if r[1] not in ids and len(ids) == n:
                    continue
                if r[1] not in ids:
                    ids.append(r[1])
                rows.append(r)
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
        rng = np.random.default_rng(len(split))
        for i, yid in enumerate(ids):
            t = np.arange(320000) / 32000
            wave = 0.2 * np.sin(2 * np.pi * (220 + 55 * i) * t) + 0.05 * rng.standard_normal(len(t))
            (root / "audio" / split).mkdir(exist_ok=True)
            sf.write(root / "audio" / split / f"{yid}.wav", wave.astype(np.float32), 32000)
    run = run_config("audiocaps_iterating.yaml", root, standins, tmp_path, capsys)
    check_run(run, 10, 2)
