"""Shared fixtures, made once per session: a tiny synthetic Clotho-layout dataset, a model trained
on it for two steps through the CLI, tested, and exported."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for the network from the tests; W&B runs stay local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Debian's tuxpaint-stamps-default (real recorded sound effects): tests/test_soundbank.py, tests/test_scenes.py
# `make test` fetches it once into ~/.cache/coattn/sounds (`coattn sounds fetch`); COATTN_TUXPAINT_DEB overrides.
def _tuxpaint_deb() -> Path:
    if os.environ.get("COATTN_TUXPAINT_DEB"):
        return Path(os.environ["COATTN_TUXPAINT_DEB"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coattn" / "sounds"
    debs = sorted(cache.glob("tuxpaint-stamps-default_*.deb"))
    return debs[-1] if debs else cache / "tuxpaint-stamps-default_missing.deb"


TUXPAINT_DEB = _tuxpaint_deb()


def require_tuxpaint() -> Path:
    """The .deb of the real recordings; a clear failure (not a skip) when it is missing."""
    if not TUXPAINT_DEB.is_file():
        pytest.fail(f"the real recordings (Debian's tuxpaint-stamps-default) are not at {TUXPAINT_DEB}: run "
                    "`make test` (it fetches them) or `coattn sounds fetch`, or set COATTN_TUXPAINT_DEB")
    return TUXPAINT_DEB


@pytest.fixture(scope="session")
def tiny_clotho(tmp_path_factory) -> Path:
    """12 / 4 / 4 synthetic clips of 2 s in the Clotho v2.1 layout (made by `coattn synth`)."""
    from coattn.cli import main

    root = tmp_path_factory.mktemp("tiny_clotho")
    rc = main(["synth", str(root), "--seed", "0", "--n-train", "12", "--n-val", "4", "--n-eval", "4",
               "--seconds", "2"])
    assert rc == 0
    return root


@pytest.fixture(scope="session")
def demo_run(tiny_clotho, tmp_path_factory):
    """(run folder, checkpoint) of `coattn fit` on the tiny set (one epoch of 2 steps), run as the
    command (a subprocess: its run_info.json records the real command line, which the model card shows)."""
    import subprocess

    from tests.reliability_helpers import coattn_cmd, subprocess_env
    from tests.test_cli import tiny_args

    run = tmp_path_factory.mktemp("search_run")
    proc = subprocess.run([*coattn_cmd(), "fit", *tiny_args(tiny_clotho)], cwd=run, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "runs/demo_scratch/checkpoints/best.ckpt"
    assert ckpt.is_file()
    return run, ckpt


@pytest.fixture(scope="session")
def exported_demo(demo_run, tiny_clotho):
    """(run folder, checkpoint, exported folder): `coattn test` on the checkpoint, then `coattn export
    --license mit` into <run>/exported, which finds the test's metrics.json in the run folder. Copies of
    that metrics.json and scores.npz stay in <run>/exported_test (other tests test the run again)."""
    import shutil

    from coattn.cli import main
    from tests.test_cli import tiny_args

    run, ckpt = demo_run
    cwd = os.getcwd()
    os.chdir(run)
    try:
        assert main(["test", *tiny_args(tiny_clotho), f"--ckpt_path={ckpt}"]) == 0
        shutil.copytree(run / "runs/demo_scratch/results/test", run / "exported_test")
        assert main(["export", "--ckpt_path", str(ckpt), str(run / "exported"), "--license", "mit"]) == 0
    finally:
        os.chdir(cwd)
    return run, ckpt, run / "exported"


@pytest.fixture(scope="session")
def tuxpaint_bank(tmp_path_factory) -> Path:
    """The full tuxpaint-stamps-default package built into a bank: 10-30 s (dpkg-deb -x 7-25 s on 2
    shared cores, the build 3 s)."""
    require_tuxpaint()
    root = tmp_path_factory.mktemp("tuxbank")
    from coattn.tools.sounds import main

    assert main(["build", str(root / "bank"), "--tuxpaint", str(TUXPAINT_DEB), "--cache-dir", str(root / "cache")]) == 0
    return root / "bank"
