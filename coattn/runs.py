"""Run bookkeeping for the CLI: W&B run continuity, output folders of sweep runs, run provenance.

``CoAttnLightningCLI`` (what ``coattn.cli.build_cli`` builds) adds two steps before the classes
are instantiated:

* **W&B resume.** ``fit/validate/test --ckpt_path X``: if ``X`` stores ``wandb_run_id`` (written by
  ``callbacks.WandbSaveConfigCallback.on_save_checkpoint``), every ``WandbLogger`` of the config
  that has no explicit ``id`` gets ``id: <that id>`` and ``resume: allow``, so a resumed run (and
  its test) continues the same W&B run instead of starting a new one.
* **Per-run output folders.** Experiment files keep every output path under
  ``trainer.default_root_dir`` (checkpoints, CSV logs, W&B files). When ``COATTN_RUN_DIR`` is set
  (``coattn sweep`` sets it per run), or under a W&B sweep agent (``WANDB_SWEEP_ID`` +
  ``WANDB_RUN_ID``: ``<default_root_dir>/sweeps/<sweep id>/<run id>``), those paths are moved to
  the run's own folder, so runs of one sweep never overwrite each other's checkpoints.

``parse_only()`` makes ``build_cli`` parse without instantiating or running (``coattn sweep`` checks
every grid point's command with it). ``run_info()`` is the provenance logged with every run (git SHA, dirty flag, package versions);
``redact()`` keeps anything that looks like a secret out of what is written.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import subprocess
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("coattn", "torch", "torchaudio", "lightning", "transformers", "tokenizers", "torchmetrics", "wandb",
            "jsonargparse", "numpy", "laion-clap", "sweeps")
SECRET_KEY = re.compile(r"(?i)(api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token|credential)")
SECRET_ARG = re.compile(r"(?i)((?:api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token)[^=\s]*=)\S+")
WANDB_LOGGER = "WandbLogger"


# ----------------------------------------------------------------------------------------------
# Provenance


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """SHA of HEAD and whether the work tree differs from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def run_info() -> dict[str, Any]:
    """What produced a run: git SHA, package versions, Python, the command line (redacted)."""
    return {"git": git_info(), "packages": package_versions(), "python": platform.python_version(),
            "platform": platform.platform(), "argv": [SECRET_ARG.sub(r"\1<redacted>", a) for a in sys.argv]}


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if isinstance(k, str) and SECRET_KEY.search(k) and v is not None else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


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
    import torch

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a broken checkpoint is reported by Lightning itself, later
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
    ``model.results_dir``. Paths outside the old root are left alone; idempotent.
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
    model = cfg.get("model")
    if model is not None and model.get("results_dir"):
        model["results_dir"] = move(model["results_dir"])
    return old_s


# Set (``parse_only``) to build the CLI's parser and parse, without instantiating or running anything.
PARSE_ONLY: ContextVar[bool] = ContextVar("coattn_cli_parse_only", default=False)


@contextmanager
def parse_only():
    """Within: ``build_cli(args)`` parses ``args`` and returns; ``cli.parser`` then parses more argv cheaply."""
    token = PARSE_ONLY.set(True)
    try:
        yield
    finally:
        PARSE_ONLY.reset(token)


class CoAttnLightningCLI(LightningCLI):
    """LightningCLI plus W&B resume and per-run output folders (module docstring)."""

    def instantiate_classes(self) -> None:
        if not PARSE_ONLY.get():
            super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        if not PARSE_ONLY.get():
            super().after_instantiate_classes()
            absolute_wandb_dirs(getattr(getattr(self, "trainer", None), "loggers", []))

    def _run_subcommand(self, subcommand: str) -> None:
        if not PARSE_ONLY.get():
            super()._run_subcommand(subcommand)

    # Evaluation settings belong to the command being run, not to the training run. Lightning (and
    # SafeLightningCLI) overlay a --ckpt_path checkpoint's hyper-parameters on the parsed config,
    # which would turn `coattn test --ckpt_path X --model.retrieval_mode=rerank` silently back into
    # the exact mode: these keys are recorded right after parsing and put back before instantiation.
    EVAL_ONLY_KEYS = ("retrieval_mode", "rerank_k", "eval_tile_pairs", "bootstrap", "results_dir")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        self._eval_only = {k: model[k] for k in self.EVAL_ONLY_KEYS if k in model} if model is not None else {}

    def _restore_eval_only(self) -> None:
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        if model is not None:
            for k, v in getattr(self, "_eval_only", {}).items():
                model[k] = v

    def before_instantiate_classes(self) -> None:
        self._restore_eval_only()
        super().before_instantiate_classes()
        if PARSE_ONLY.get():
            return
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = os.environ.get("COATTN_RUN_DIR")
        if not run_dir and os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            root = cfg.get("trainer", {}).get("default_root_dir") or "runs"
            run_dir = f"{str(root).rstrip('/')}/sweeps/{os.environ['WANDB_SWEEP_ID']}/{os.environ['WANDB_RUN_ID']}"
        if run_dir:
            old = relocate_outputs(cfg, run_dir)
            log.info("outputs of this run go to %s (instead of %s)", run_dir, old)
            name = os.environ.get("COATTN_RUN_NAME")
            for lg in wandb_logger_specs(cfg):
                if name:
                    lg.init_args["name"] = name
                if os.environ.get("COATTN_RUN_GROUP"):
                    lg.init_args["group"] = os.environ["COATTN_RUN_GROUP"]
        ckpt = cfg.get("ckpt_path") if self.subcommand in ("fit", "validate", "test") else None
        if ckpt and os.path.isfile(str(ckpt)) and wandb_logger_specs(cfg):
            run_id = read_wandb_run_id(ckpt)
            if run_id and set_wandb_resume(cfg, run_id):
                print(f"W&B: continuing run {run_id} (from {ckpt})", file=sys.stderr)
