"""``WandbSaveConfigCallback``: LightningCLI's SaveConfigCallback, made W&B-aware.

What it does at the start of every fit/validate/test (rank 0):

* writes the resolved config to ``<log_dir>/coattn_config.yaml`` (not ``config.yaml``: that
  name is W&B's own file in every run folder), headed by comment lines with the git SHA and
  package versions, and ``<log_dir>/run_info.json`` (the same provenance as JSON);
* for every ``WandbLogger``: puts the nested config into ``wandb.config`` (top-level keys
  ``trainer``, ``model``, ``data``, ``seed_everything``... plus ``run_info``) and copies
  ``coattn_config.yaml`` and ``run_info.json`` into the run's files (uploaded with the run;
  offline they sit in ``wandb/offline-run-*/files/``);
* stores the W&B run id in every checkpoint (``checkpoint["wandb_run_id"]``), so that
  ``coattn fit --ckpt_path last.ckpt`` continues the same W&B run (``coattn.train.runs``).

Values of secret-looking keys (api_key, token, password...) are replaced before anything is
written; W&B credentials only ever come from the environment or ``wandb login``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from callbacks.common import wandb_loggers
from coattn.provenance import redact, run_info

CONFIG_FILENAME = "coattn_config.yaml"


class WandbSaveConfigCallback(SaveConfigCallback):
    """SaveConfigCallback that also logs the config and provenance to W&B (module docstring)."""

    def __init__(self, parser, config, config_filename: str = CONFIG_FILENAME, overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = True) -> None:
        super().__init__(parser, config, config_filename=config_filename, overwrite=overwrite,
                         multifile=multifile, save_to_log_dir=save_to_log_dir)
        self._log_dir: str | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved:
            self._log_dir = trainer.log_dir  # a collective call: every rank, before save_config (rank 0)
        super().setup(trainer, pl_module, stage)

    def nested_config(self) -> dict[str, Any]:
        text = self.parser.dump(self.config, skip_none=False)
        return redact(yaml.safe_load(text) or {})

    @override
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        info = run_info()
        config = self.nested_config()
        files: list[Path] = []
        if self.save_to_log_dir and self._log_dir:
            log_dir = Path(self._log_dir)
            path = log_dir / self.config_filename
            # rewrite what the base class saved: the same config (redacted), provenance on top
            path.write_text(self._header(info, stage) + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            info_path = log_dir / "run_info.json"
            info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            files = [path, info_path]
        for logger in wandb_loggers(trainer):
            run = logger.experiment
            run.config.update({**config, "run_info": info}, allow_val_change=True)
            run_dir = Path(run.dir)
            for f in files:  # files in run.dir are uploaded with the run (and kept offline)
                if f.resolve().parent != run_dir.resolve():
                    shutil.copyfile(f, run_dir / f.name)

    @staticmethod
    def _header(info: dict, stage: str) -> str:
        git = info["git"]
        lines = [f"# coattn {getattr(stage, 'value', stage)} config, resolved by LightningCLI",
                 f"# git: {git['sha']}{' (dirty work tree)' if git['dirty'] else ''}",
                 "# packages: " + ", ".join(f"{k}=={v}" for k, v in info["packages"].items() if v),
                 f"# python: {info['python']}"]
        return "\n".join(lines) + "\n"

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in wandb_loggers(trainer):
            run_id = logger.version  # the live run's id, or the configured id before the run starts
            if run_id:
                checkpoint["wandb_run_id"] = str(run_id)
                break
