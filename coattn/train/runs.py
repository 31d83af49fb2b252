"""Run folders and W&B run continuity: surgery on the parsed config, before anything is built.

* **Per-run output folders.** Experiment files keep every output path under
  ``trainer.default_root_dir`` (checkpoints, CSV logs, W&B files, results). When ``COATTN_RUN_DIR``
  is set (``coattn sweep`` sets it per run, with ``COATTN_RUN_NAME`` / ``COATTN_RUN_GROUP`` for W&B),
  or under a W&B sweep agent (``WANDB_SWEEP_ID`` + ``WANDB_RUN_ID``:
  ``<default_root_dir>/sweeps/<sweep id>/<run id>``), those paths move to the run's own folder, so
  runs never overwrite each other's checkpoints (``run_dir_from_env``, ``relocate_outputs``).
* **W&B resume.** ``--ckpt_path X`` whose checkpoint stores ``wandb_run_id`` (written by
  ``callbacks.WandbSaveConfigCallback``): every ``WandbLogger`` without an explicit ``id`` continues
  that run (``set_wandb_resume``).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from jsonargparse import Namespace

from coattn.errors import CheckpointError
from coattn.io import load_checkpoint

log = logging.getLogger(__name__)

WANDB_LOGGER = "WandbLogger"
RUN_DIR_ENV, RUN_NAME_ENV, RUN_GROUP_ENV = "COATTN_RUN_DIR", "COATTN_RUN_NAME", "COATTN_RUN_GROUP"


def run_dir_from_env(default_root_dir: str | None) -> str | None:
    """The run folder the environment asks for: ``COATTN_RUN_DIR``, or a W&B sweep agent's run."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir and os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        root = str(default_root_dir or "runs").rstrip("/")
        run_dir = f"{root}/sweeps/{os.environ['WANDB_SWEEP_ID']}/{os.environ['WANDB_RUN_ID']}"
    return run_dir or None


def name_wandb_runs(cfg) -> None:
    """``COATTN_RUN_NAME`` / ``COATTN_RUN_GROUP`` (set by ``coattn sweep``) name the run's WandbLoggers."""
    for lg in wandb_logger_specs(cfg):
        for env, key in ((RUN_NAME_ENV, "name"), (RUN_GROUP_ENV, "group")):
            if os.environ.get(env):
                lg.init_args[key] = os.environ[env]


# ----------------------------------------------------------------------------------------------
# Config surgery (on jsonargparse Namespaces, before instantiation)


def _items(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def wandb_logger_specs(cfg) -> list:
    """The ``trainer.logger`` entries of ``cfg`` that are WandbLoggers (Namespaces with init_args)."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    loggers = _items(trainer.get("logger") if trainer is not None else None)
    return [lg for lg in loggers if hasattr(lg, "get") and str(lg.get("class_path", "")).endswith(WANDB_LOGGER)
            and lg.get("init_args") is not None]


def absolute_wandb_dirs(loggers) -> None:
    """Make each not-yet-started WandbLogger's folder absolute.

    wandb-core is one long-lived service per process that resolves relative paths against *its*
    working directory, the one of the first run. A second in-process run after a ``chdir`` (sweeps,
    notebooks, tests) would otherwise write its ``run-*.wandb`` file into the first run's folder.
    The YAML config keeps the relative path; only the live logger is changed.
    """
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is None and lg._wandb_init.get("dir"):
            lg._wandb_init["dir"] = lg._save_dir = os.path.abspath(lg._wandb_init["dir"])


def read_wandb_run_id(ckpt_path: str | os.PathLike) -> str | None:
    """The W&B run id stored in a Lightning checkpoint, or None."""
    try:
        ckpt = load_checkpoint(ckpt_path, mmap=True)
    except CheckpointError as exc:  # the CLI reports a broken checkpoint itself
        log.warning("could not read %s for its W&B run id: %s", ckpt_path, exc)
        return None
    run_id = ckpt.get("wandb_run_id") if isinstance(ckpt, dict) else None
    return str(run_id) if run_id else None


def set_wandb_resume(cfg, run_id: str) -> int:
    """Give every WandbLogger without an explicit id ``id=run_id, resume="allow"``; returns how many."""
    n = 0
    for lg in wandb_logger_specs(cfg):
        args = lg.init_args
        if args.get("id") or args.get("version"):
            continue
        args["id"] = run_id
        args["resume"] = "allow"
        n += 1
    return n


def relocate_outputs(cfg, new_root: str) -> str | None:
    """Move every output path under ``trainer.default_root_dir`` to ``new_root``; returns the old root.

    Walks ``trainer`` (default_root_dir, loggers' save_dir/dir, callbacks' dirpath...) and
    ``model.evaluation.results_dir``. Paths outside the old root are left alone; idempotent.
    """
    trainer = cfg.get("trainer")
    old = trainer.get("default_root_dir") if trainer is not None else None
    if not old:
        return None
    old_s, new_s = str(old).rstrip("/"), str(new_root).rstrip("/")

    def move(v: Any) -> Any:
        if isinstance(v, (str, os.PathLike)) and not isinstance(v, bytes):
            s = str(v)
            if s.startswith(new_s + "/") or s == new_s:
                return v
            if s == old_s or s.startswith(old_s + "/"):
                return new_s + s[len(old_s):]
            return v
        if isinstance(v, Namespace):
            for k, sub in list(vars(v).items()):
                setattr(v, k, move(sub))
            return v
        if isinstance(v, dict):
            return {k: move(sub) for k, sub in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        return v

    trainer["default_root_dir"] = new_s
    for key in ("logger", "callbacks"):
        if trainer.get(key) is not None:
            trainer[key] = move(trainer[key])
    evaluation = cfg.get("model", {}).get("evaluation") if cfg.get("model") is not None else None
    if evaluation is not None and evaluation.get("results_dir"):
        evaluation["results_dir"] = move(evaluation["results_dir"])
    return old_s
