"""Reliability and safe loading: atomic checkpoint writes, weights-only reads, clear resume errors.

What ``coattn fit/validate/test/predict`` get from here (``SafeLightningCLI``, what
``coattn.cli.build_cli`` builds), without any YAML change:

* **Atomic checkpoints.** ``SafeCheckpointIO`` writes ``<dir>/.coattn-ckpt-<pid>-*.partial`` in
  the checkpoint's own folder, fsyncs it, ``os.replace``\\ s it over the target and fsyncs the
  folder. A kill at any moment leaves either the old complete file or the new complete file.
  (Lightning 2.6.6's ``_atomic_save`` goes through an fsspec transaction that writes a
  ``tempfile.mkstemp()`` file in ``$TMPDIR`` and ``shutil.move``\\ s it: a *copy* when ``$TMPDIR``
  is another file system, so a kill during that copy truncates ``last.ckpt``; and no fsync.)
  It also refuses to write a checkpoint whose weights hold NaN/Inf, so a diverged model never
  replaces the last good checkpoint.
* **Weights-only loading.** ``SafeCheckpointIO.load_checkpoint`` (Lightning's ``ckpt_path``
  path) and ``safe_torch_load`` always use ``torch.load(weights_only=True)``, whatever the
  caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` asks; a file that pickles code is refused with
  a ``CheckpointLoadError`` naming the file and the offending global.
* **``--ckpt_path`` checked at start-up.** A missing, truncated, unsafe or foreign file is a
  one-line error before anything is built; ``--ckpt_path last`` is resolved to the newest
  ``last*.ckpt`` of the configured ``ModelCheckpoint`` folder *before* the config is
  finalised, so it behaves exactly like the explicit path (W&B run continued, hyper-parameters).
* **Who wins on resume.** LightningCLI (2.6.6) re-parses the checkpoint's ``hyper_parameters``
  over the ``model`` section: **the checkpoint's model configuration wins** over the YAML and
  the command line (the architecture always matches the weights); ``data``, ``trainer`` and
  ``seed_everything`` come from the YAML / command line. Every model value the checkpoint
  overrides is printed. A checkpoint without usable hyper-parameters whose weights do not fit
  the model the YAML builds is a ``CheckpointLoadError`` listing the mismatching keys.
* ``callbacks.atomic_checkpoint.KeepLastCheckpoint`` whenever a ``ModelCheckpoint`` has
  ``save_last``: Lightning 2.6.6 refreshes ``last.ckpt`` only in epochs where the monitored
  metric made the top k, so without it ``--ckpt_path last`` resumes from a stale epoch.
* Default callbacks, added unless the config has one of the same class:
  ``callbacks.numerics.NonFiniteGuard`` (stop on a NaN/Inf loss or gradient, naming the step
  and the loss term) and ``callbacks.resume_state.RngState`` (global RNG states in checkpoints,
  so dropout continues the same random stream on resume).
"""
from __future__ import annotations

import contextlib
import glob
import os
import pickle
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from coattn.runs import CoAttnLightningCLI

PARTIAL_PREFIX = ".coattn-ckpt-"
PARTIAL_SUFFIX = ".partial"
SPECIAL_CKPT = ("last", "best", "hpc")


class UserFacingError(Exception):
    """An error whose message is the whole story: ``coattn`` prints it without a traceback."""


class CheckpointLoadError(UserFacingError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or does not fit the model."""


class NonFiniteError(UserFacingError, RuntimeError):
    """A NaN/Inf loss, gradient or weight: the run stops before it can damage anything."""


# ----------------------------------------------------------------------------------------------
# Loading


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with an error that names the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointLoadError(f"checkpoint not found: {str(path)!r}")
    if p.stat().st_size == 0:
        raise CheckpointLoadError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted copy?")
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (it contains {found.group(1)})" if found else ""
        raise CheckpointLoadError(
            f"refusing to load {str(path)!r}{what}: it pickles objects other than tensors, containers and plain "
            "values, and coattn loads checkpoints with weights_only=True only (unpickling could run arbitrary "
            "code). If you trust the file, re-save just its tensors and plain values from a Python session."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointLoadError(f"cannot read checkpoint {str(path)!r} (truncated, or not a torch checkpoint): "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic, fsynced, finite-only writes; weights-only reads (module docstring)."""

    def __init__(self, check_finite: bool = True):
        super().__init__()
        self.check_finite = check_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options}")
        if self.check_finite:
            bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
            if bad:
                raise NonFiniteError(f"refusing to write checkpoint {str(path)!r}: {len(bad)} weight tensors hold "
                                     f"NaN/Inf (e.g. {bad[:3]}); the previous checkpoint is kept")
        if not _is_local_file_protocol(path):  # object storage: Lightning's transaction is the best there is
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return safe_torch_load(path, map_location=map_location)


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating tensors of ``state`` holding a NaN or Inf."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partials(folder: str | os.PathLike) -> list[str]:
    """Remove ``.coattn-ckpt-<pid>-*.partial`` files of processes that no longer run (killed saves)."""
    removed = []
    for f in glob.glob(os.path.join(glob.escape(str(folder)), PARTIAL_PREFIX + "*" + PARTIAL_SUFFIX)):
        m = re.match(re.escape(PARTIAL_PREFIX) + r"(\d+)-", os.path.basename(f))
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(f)
                removed.append(f)
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, ``os.replace``, fsync the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_partials(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# ----------------------------------------------------------------------------------------------
# The CLI


def _ns_to_dict(v: Any) -> Any:
    if hasattr(v, "as_dict"):
        return v.as_dict()
    if isinstance(v, dict):
        return {k: _ns_to_dict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_ns_to_dict(x) for x in v]
    return v


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def checkpoint_dirs(cfg) -> list[str]:
    """``dirpath`` of every ModelCheckpoint in a (sub)command config, before instantiation."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    cbs = trainer.get("callbacks") if trainer is not None else None
    cbs = cbs if isinstance(cbs, list) else ([cbs] if cbs is not None else [])
    out = []
    for cb in cbs:
        cls = str(cb.get("class_path", "")) if hasattr(cb, "get") else type(cb).__name__
        if not cls.endswith("ModelCheckpoint"):
            continue
        args = cb.get("init_args") if hasattr(cb, "get") else None
        d = args.get("dirpath") if args is not None else getattr(cb, "dirpath", None)
        if d:
            out.append(str(d))
    return out


def find_last_checkpoint(dirs: list[str]) -> str | None:
    """The newest file whose name contains ``last`` and ends ``.ckpt`` in ``dirs`` (as Lightning picks)."""
    found = [os.path.join(d, f) for d in dirs if os.path.isdir(d) for f in os.listdir(d)
             if "last" in f and f.endswith(".ckpt") and not f.startswith(PARTIAL_PREFIX)]
    return max(found, key=os.path.getmtime) if found else None


def _has_type(items: Any, cls: type) -> bool:
    items = items if isinstance(items, list) else ([items] if items is not None else [])
    return any(isinstance(x, cls) for x in items)


class SafeLightningCLI(CoAttnLightningCLI):
    """``CoAttnLightningCLI`` + checked ``--ckpt_path``, atomic/safe checkpoint IO, default guards."""

    _ckpt_shapes: dict[str, tuple] | None = None
    _ckpt_file: str | None = None

    def _parse_ckpt_path(self) -> None:  # LightningCLI 2.6.6 (private): runs before instantiation
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        ckpt = cfg.get("ckpt_path")
        if not ckpt:
            return
        ckpt = str(ckpt)
        if ckpt == "last":
            dirs = checkpoint_dirs(cfg)
            found = find_last_checkpoint(dirs)
            if found is None:
                if dirs:  # Lightning's behaviour ("set and forget"): start from scratch, loudly
                    print(f"coattn: --ckpt_path last: no last*.ckpt in {', '.join(dirs)}; starting from scratch",
                          file=sys.stderr)
                    cfg["ckpt_path"] = None
                return  # no dirpath configured: Lightning resolves 'last' itself
            print(f"coattn: --ckpt_path last -> {found}", file=sys.stderr)
            cfg["ckpt_path"] = ckpt = found
        elif ckpt in SPECIAL_CKPT or "://" in ckpt:
            return super()._parse_ckpt_path()
        checkpoint = safe_torch_load(ckpt, mmap=True)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise CheckpointLoadError(f"{ckpt!r} is not a Lightning checkpoint of coattn (no 'state_dict'; "
                                      f"top-level keys: {sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__})")
        self._ckpt_file = ckpt
        self._ckpt_shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()
                             if isinstance(v, torch.Tensor)}
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            print(f"coattn: {ckpt} stores no hyper-parameters: the model is built from the config", file=sys.stderr)
            return
        before = _flatten(_ns_to_dict(cfg.get("model")) or {})
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"coattn: the hyper-parameters stored in {ckpt} do not parse with this version of "
                             "coattn (a renamed or removed model option?)\n")
            raise
        after = _flatten(_ns_to_dict(self.config[sub].get("model")) or {})
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        if changed:
            lines = [f"  model.{k}: {after.get(k)!r} (config: {before.get(k)!r})" for k in changed]
            print(f"coattn: the model configuration comes from the checkpoint {ckpt}; it overrides:\n"
                  + "\n".join(lines), file=sys.stderr)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self._ckpt_shapes is None or getattr(self, "model", None) is None:
            return
        own = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        missing = sorted(set(own) - set(self._ckpt_shapes))
        unexpected = sorted(set(self._ckpt_shapes) - set(own))
        shapes = [f"{k}: checkpoint {self._ckpt_shapes[k]} vs model {own[k]}"
                  for k in sorted(set(own) & set(self._ckpt_shapes)) if own[k] != self._ckpt_shapes[k]]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model weights missing from it (e.g. {missing[:3]})")
            if unexpected:
                parts.append(f"{len(unexpected)} weights the model does not have (e.g. {unexpected[:3]})")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
            raise CheckpointLoadError(
                f"checkpoint {self._ckpt_file!r} does not fit the model this config builds (another architecture, "
                f"cascade or encoder size?): {'; '.join(parts)}. Use the config the checkpoint was trained with.")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        from lightning.fabric.plugins import CheckpointIO

        from lightning.pytorch.callbacks import ModelCheckpoint

        from callbacks.atomic_checkpoint import KeepLastCheckpoint
        from callbacks.numerics import NonFiniteGuard
        from callbacks.resume_state import RngState

        if config.get("enable_progress_bar") is False:
            # `--trainer.enable_progress_bar=false` on a YAML that configures a bar: drop the bar
            # instead of Lightning's MisconfigurationException.
            from lightning.pytorch.callbacks import ProgressBar

            kept = [c for c in (config.get("callbacks") or []) if not isinstance(c, ProgressBar)]
            config = {**config, "callbacks": kept}
        existing = list(config.get("callbacks") or []) + list(callbacks)
        extra = [cls() for cls in (NonFiniteGuard, RngState) if not _has_type(existing, cls)]
        if (config.get("enable_checkpointing") is not False and not _has_type(existing, KeepLastCheckpoint)
                and any(isinstance(c, ModelCheckpoint) and c.save_last for c in existing)):
            extra.append(KeepLastCheckpoint())
        plugins = config.get("plugins")
        if not _has_type(plugins, CheckpointIO):
            plugins = plugins if isinstance(plugins, list) else ([plugins] if plugins is not None else [])
            config = {**config, "plugins": [*plugins, SafeCheckpointIO()]}
        return super()._instantiate_trainer(config, [*callbacks, *extra])
