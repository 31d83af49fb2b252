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
* **One fit per run folder, and never over another run.** ``lock_run_folder`` takes an exclusive
  ``flock`` on ``<folder>/.coattn-fit.lock`` for the life of the fit (the kernel drops it when the
  process dies, so a killed run leaves no stale lock) and names the holder when it is taken;
  ``refuse_overwrite`` stops a fresh start in a folder that holds another run's checkpoints;
  ``check_writable`` creates each output folder and writes a probe file in it, at start-up.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from coattn.errors import CheckpointError, ConfigError, OutputError
from coattn.io import is_partial, load_checkpoint

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


# ----------------------------------------------------------------------------------------------
# Run folders: writable, one fit at a time, never over another run

LOCK_NAME = ".coattn-fit.lock"
_held: list[int] = []  # file descriptors of the run-folder locks this process holds


def check_writable(folder: str | os.PathLike, key: str,
                   hint: str = "COATTN_RUN_DIR=<folder> moves every output of the config") -> None:
    """Create ``folder`` and write (then remove) a probe file in it; ``OutputError`` naming ``key`` if not.

    A probe, not ``os.access``: root passes every permission check but still fails on a read-only
    file system, and a file standing where a parent folder should be only shows when creating it.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".coattn-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OutputError(f"{key}: cannot write to {os.fspath(folder)!r} ({exc.strerror or exc}); point it to a "
                          f"folder you can write ({hint})") from None


def lock_run_folder(folder: str | os.PathLike) -> None:
    """Hold an exclusive lock on ``folder`` until ``release_run_folders`` (or the process ends);
    ``ConfigError`` naming the process that holds it already."""
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace")
        os.close(fd)
        try:
            h = json.loads(holder)
            who = f"pid {h['pid']} on {h['host']}, since {h['started']}: {h['command']}"
        except (ValueError, KeyError, TypeError):
            who = "a process that is just starting"
        raise ConfigError(f"run folder {os.fspath(folder)!r} is in use by another `coattn fit` ({who}). Two fits "
                          "in one folder would interleave their checkpoints: wait for it to finish, or give this run "
                          "its own folder (COATTN_RUN_DIR=<folder> moves every output of the config there)") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
            "command": " ".join(["coattn", *sys.argv[1:]])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held.append(fd)


def release_run_folders() -> None:
    """Release every run-folder lock of this process (in-process runs: sweeps, tests, notebooks)."""
    while _held:
        fd = _held.pop()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def checkpoints_in(dirs: list[str]) -> list[str]:
    """The checkpoint files (``*.ckpt``, no partial writes) in ``dirs``, sorted."""
    return sorted(os.path.join(d, f) for d in dirs if os.path.isdir(d) for f in os.listdir(d)
                  if f.endswith(".ckpt") and not is_partial(f))


def refuse_overwrite(dirs: list[str], start_from: str | None) -> None:
    """A fit that does not resume the run of its checkpoint folder(s) would overwrite its checkpoints:
    ``ConfigError`` saying how to resume or where else to go. ``start_from``: the checkpoint the
    fit starts from (None: from scratch); one of the folder's own checkpoints is a resume."""
    found = checkpoints_in(dirs)
    if not found:
        return
    own = start_from is not None and os.path.realpath(start_from) in {os.path.realpath(f) for f in found}
    if own:
        return
    names = ", ".join(os.path.basename(f) for f in found[:4]) + (", ..." if len(found) > 4 else "")
    how = "a fresh start" if start_from is None else f"starting from {start_from!r}"
    raise ConfigError(f"{', '.join(dirs)} already holds the checkpoints of a run ({names}) and {how} would overwrite "
                      "them: pass --ckpt_path last to resume that run, or choose another folder "
                      "(COATTN_RUN_DIR=<folder> moves every output of the config there)")
