"""Shared fixtures: a tiny synthetic Clotho-layout dataset made once per session."""
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


@pytest.fixture(scope="session")
def tiny_clotho(tmp_path_factory) -> Path:
    """12 / 4 / 4 synthetic clips of 2 s in the Clotho v2.1 layout (made by `coattn synth`)."""
    from coattn.cli import main

    root = tmp_path_factory.mktemp("tiny_clotho")
    rc = main(["synth", str(root), "--seed", "0", "--n-train", "12", "--n-val", "4", "--n-eval", "4",
               "--seconds", "2"])
    assert rc == 0
    return root
