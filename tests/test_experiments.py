"""Every experiment file parses and instantiates (tiny stand-ins for the pretrained parts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coattn.train.cli import build_cli
from tests.conftest import REPO

EXP = REPO / "experiments"
REAL = sorted(p.name for p in EXP.glob("*.yaml") if p.name.split("_")[0] in ("clotho", "audiocaps"))
DEBUG = sorted(p.name for p in (EXP / "debug").glob("*.yaml"))
OVERLAYS = {"demo_wandb.yaml": "demo.yaml"}  # files that compose on top of another
# Pretrained towers -> tiny ones (no checkpoint or hub download); everything else as written.
TINY = ["--model.audio_encoder.init_args.config=HTSAT-mini", "--model.audio_encoder.init_args.checkpoint=null",
        "--model.text_encoder.class_path=coattn.encoders.TinyTextEncoder"]


def test_the_expected_files_exist():
    assert REAL == [f"{d}_{k}.yaml" for d in ("audiocaps", "clotho") for k in ("iterating", "single", "stacking")]
    assert {"fast_dev_run.yaml", "overfit_batch.yaml", "limit_batches.yaml", "ddp_cpu.yaml"} <= set(DEBUG)
    assert (EXP / "demo.yaml").is_file() and (EXP / "demo_wandb.yaml").is_file()


def instantiate(*configs: Path, extra: list[str] = ()):
    args = [a for c in configs for a in ("--config", str(c))] + list(extra)
    return build_cli(args, run=False)


@pytest.mark.parametrize("name", REAL)
def test_real_experiment_instantiates(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may be written at instantiation, but stay out of the repo
    cli = instantiate(EXP / name, extra=TINY)
    dataset, kind = name[:-5].split("_")
    cascade = cli.model.model.cascade
    assert cascade.kind == kind and cascade.depth == (1 if kind == "single" else 5) and cascade.width == 512
    assert type(cli.datamodule).__name__ == {"clotho": "ClothoDataModule", "audiocaps": "AudioCapsDataModule"}[dataset]
    loggers = {type(lg).__name__: lg for lg in cli.trainer.loggers}
    assert list(loggers) == ["CSVLogger", "WandbLogger"]
    wb = loggers["WandbLogger"]
    assert wb._wandb_init["project"] == "coattn" and wb._wandb_init["name"] == name[:-5]
    assert {dataset, kind} <= set(wb._wandb_init["tags"])
    callbacks = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "LogFriendlyProgressBar", "RetrievalExamples",
            "AttentionMaps", "WandbSaveConfigCallback"} <= callbacks
    assert cli.trainer.checkpoint_callback.monitor == "val/t2a_mAP@10"


def test_real_experiments_share_their_hyper_parameters():
    """The six files differ only in the cascade, the data, names/paths, epochs and warm-up."""
    def normalised(name: str) -> dict:
        text = (EXP / name).read_text().replace(name[:-5], "NAME")
        cfg = yaml.safe_load(text)
        cfg["model"]["cascade"]["init_args"].pop("kind")
        cfg["model"]["cascade"]["init_args"].pop("depth")
        cfg["model"]["optim"].pop("warmup_steps")
        cfg.pop("data")
        for key in ("max_epochs",):
            cfg["trainer"].pop(key)
        cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "EarlyStopping" not in c["class_path"]]
        cfg["trainer"]["logger"][1]["init_args"].pop("tags")
        return cfg

    first = normalised(REAL[0])
    for name in REAL[1:]:
        assert normalised(name) == first, name
    assert first["model"]["audio_encoder"]["init_args"]["config"] == "HTSAT-tiny"
    assert first["model"]["text_encoder"]["init_args"]["model"] == "roberta-base"
    assert "seed_everything" in first


@pytest.mark.parametrize("name", [*REAL, "demo.yaml"])
def test_outputs_live_under_default_root_dir(name):
    """Sweep runs relocate default_root_dir (coattn/runs.py); a path outside it would be shared."""
    cfg = yaml.safe_load((EXP / name).read_text())
    root = cfg["trainer"]["default_root_dir"]
    paths = [lg["init_args"].get("save_dir") for lg in cfg["trainer"]["logger"]]
    paths += [c["init_args"].get("dirpath") for c in cfg["trainer"]["callbacks"] if "init_args" in c]
    assert all(p.startswith(root + "/") or p == root for p in paths if p), paths


@pytest.mark.parametrize("name", DEBUG + list(OVERLAYS))
def test_composable_files_instantiate(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    base = EXP / OVERLAYS.get(name, "demo.yaml")
    path = EXP / name if name in OVERLAYS else EXP / "debug" / name
    cli = instantiate(base, path)
    t = cli.trainer
    if name == "fast_dev_run.yaml":
        assert t.fast_dev_run
    elif name == "overfit_batch.yaml":
        assert t.overfit_batches == 1
    elif name == "limit_batches.yaml":
        assert t.limit_train_batches == 10 and t.max_epochs == 2
    elif name == "ddp_cpu.yaml":
        assert t.num_devices == 2 and type(t.strategy).__name__ == "DDPStrategy"
        assert t.strategy._process_group_backend == "gloo"
    elif name == "demo_wandb.yaml":
        assert [type(lg).__name__ for lg in t.loggers] == ["CSVLogger", "WandbLogger"]
        assert cli.model.model.cascade.kind == "iterating"  # the demo's model is untouched


def test_debug_files_compose_with_a_real_experiment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli = instantiate(EXP / "clotho_iterating.yaml", EXP / "debug" / "limit_batches.yaml", extra=TINY)
    assert cli.trainer.limit_val_batches == 4 and cli.model.model.cascade.depth == 5


PRETRAINED = sorted(p.name for p in (EXP / "real").glob("*.yaml"))


def test_the_pretrained_regime_files_exist():
    assert PRETRAINED == ["coattn.yaml", "dual.yaml", "dual_text_ft.yaml"]


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_regime_experiment_instantiates_with_the_real_packaged_towers(name, monkeypatch, tmp_path):
    """experiments/real/ builds with the real aisfx and MiniLM towers (installed by the install step), the data
    module cuts the aisfx tower's 44.1 kHz window, the dual stage stops early on validation t2a mAP@10."""
    monkeypatch.chdir(tmp_path)
    cli = instantiate(EXP / "real" / name, extra=["--model.init_from=null"])
    model = cli.model.model
    assert type(model.audio_encoder).__name__ == "AisfxAudioEncoder" and model.audio_encoder.out_dim == 512
    assert model.text_encoder.out_dim == 384 and len(model.text_encoder.tokenizer) == 30522
    assert cli.datamodule.sample_rate == model.audio_encoder.sample_rate == 44100
    assert cli.datamodule.num_samples == model.audio_encoder.clip_samples
    stop = [c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert len(stop) == 1 and stop[0].monitor == "val/t2a_mAP@10" and stop[0].patience >= 3
    assert model.cascade.kind == ("none" if name.startswith("dual") else "iterating")
    assert model.text_encoder.freeze == (name != "dual_text_ft.yaml") and model.audio_encoder.freeze
