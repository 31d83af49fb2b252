"""Artefacts of the 0.1 layout keep working (coattn/train/legacy.py): a checkpoint with flat model
hyper-parameters, a YAML with flat keys and a moved class path, old command-line flags. And the
rule that replaced ``EVAL_ONLY_KEYS``: a checkpoint restores the architecture, never ``evaluation``."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from coattn.cli import main
from coattn.model import CoAttnModel
from coattn.train.cli import build_cli, parse_only
from tests.conftest import REPO
from tests.reliability_helpers import tiny_fit_args

DEMO = REPO / "experiments" / "demo_scratch.yaml"
FLAT = {"optim": {"lr": "lr", "encoder_lr": "encoder_lr", "audio_encoder_lr": "audio_encoder_lr",
                  "weight_decay": "weight_decay", "warmup_steps": "warmup_steps"},
        "loss": {"aux_weight": "aux_weight", "pair_negatives": "pair_negatives"},
        "evaluation": {"mode": "retrieval_mode", "tile_pairs": "eval_tile_pairs", "rerank_k": "rerank_k",
                       "bootstrap": "bootstrap", "results_dir": "results_dir"}}


def flatten_to_0_1(model: dict) -> dict:
    """A ``model`` section (or hyper-parameters) as coattn 0.1 wrote it: every group's keys flat."""
    out = {k: v for k, v in model.items() if k not in FLAT}
    for group, names in FLAT.items():
        for new, old in names.items():
            if new in (model.get(group) or {}):
                out[old] = model[group][new]
    return out


@pytest.fixture(scope="module")
def old_checkpoint(tiny_clotho, tmp_path_factory):
    """A checkpoint in the 0.1 layout (flat hyper-parameters), of a model that tests in rerank mode."""
    cli = build_cli(tiny_fit_args(tiny_clotho), run=False)
    cli.model.model.text_encoder.fit_tokenizer(cli.datamodule.train_captions())
    hparams = flatten_to_0_1(dict(cli.model.hparams))
    hparams.update(retrieval_mode="rerank", rerank_k=1, bootstrap=7)  # evaluation settings the run must NOT take
    assert "lr" in hparams and "optim" not in hparams and "retrieval_mode" in hparams
    path = tmp_path_factory.mktemp("old") / "old.ckpt"
    torch.save({"state_dict": cli.model.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "tokenizer_state": cli.model.model.text_encoder.tokenizer_state(),
                "pytorch-lightning_version": "2.6.6"}, path)
    return path


def test_old_checkpoint_tests_and_evaluation_comes_from_the_command(old_checkpoint, tiny_clotho, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["test", *tiny_fit_args(tiny_clotho), f"--ckpt_path={old_checkpoint}"]) == 0
    err = capsys.readouterr().err
    assert "coattn 0.1 layout" in err and "model.retrieval_mode -> model.evaluation.mode" in err
    metrics = json.loads((tmp_path / "runs/demo_scratch/results/test/metrics.json").read_text())
    assert metrics["extra"]["retrieval_mode"] == "exact"  # the command's evaluation, not the checkpoint's
    model = CoAttnModel.from_checkpoint(old_checkpoint)  # the library reads it too
    assert model.cascade.kind == "iterating" and not model.training


def test_old_yaml_and_old_flags_parse_into_the_groups(tmp_path, capsys):
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["model"] = flatten_to_0_1(cfg["model"])
    cfg["trainer"]["plugins"] = [{"class_path": "coattn.safety.SafeCheckpointIO"}]  # a class that moved
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(cfg))
    cli = parse_only(["fit", "--config", str(old), "--model.encoder_lr=0.25", "--model.retrieval_mode", "rerank"])
    model = cli.config.fit.model
    assert model.optim.lr == 1e-3 and model.optim.encoder_lr == 0.25 and model.optim.warmup_steps == 25
    assert model.loss.aux_weight == 0.5 and model.evaluation.bootstrap == 1000 and model.evaluation.mode == "rerank"
    assert cli.config.fit.trainer.plugins[0].class_path == "coattn.train.checkpoints.SafeCheckpointIO"
    err = capsys.readouterr().err
    assert "--model.encoder_lr -> --model.optim.encoder_lr" in err and "coattn.safety.SafeCheckpointIO ->" in err


def test_lightning_still_calls_the_one_private_hook_coattn_overrides():
    """CoAttnCLI switches off ``LightningCLI._parse_ckpt_path`` (it overlays every checkpoint
    hyper-parameter, evaluation included) and does the overlay in ``parse_arguments``. If Lightning
    renames the method or calls it elsewhere, the evaluation group could silently come from the
    checkpoint again: this fails first."""
    src = inspect.getsource(LightningCLI.__init__)
    parse, hook, before = (src.find(s) for s in ("self.parse_arguments(", "self._parse_ckpt_path()",
                                                   "self.before_instantiate_classes()"))
    assert -1 < parse < hook < before, "LightningCLI.__init__ changed: review CoAttnCLI._parse_ckpt_path"
