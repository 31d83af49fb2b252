"""Lightning checkpoints, safely: the ``CheckpointIO`` plugin every coattn trainer gets, and where
``--ckpt_path last`` points.

``SafeCheckpointIO`` writes through ``coattn.io.atomic_torch_save`` (temp file in the checkpoint's
own folder, fsync, ``os.replace``: a kill at any moment leaves the old or the new complete file),
refuses to write a checkpoint whose weights hold NaN/Inf (a diverged model never replaces the last
good checkpoint), and reads through ``coattn.io.load_checkpoint`` (weights only, whatever the
caller asks). Object-storage paths keep Lightning's own transaction.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from coattn.errors import NonFiniteError
from coattn.io import atomic_torch_save, is_partial, load_checkpoint


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
        return load_checkpoint(path, map_location=map_location)


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating tensors of ``state`` holding a NaN or Inf."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def checkpoint_dirs(trainer_cfg) -> list[str]:
    """``dirpath`` of every ModelCheckpoint in a parsed ``trainer`` section, before instantiation."""
    cbs = trainer_cfg.get("callbacks") if trainer_cfg is not None else None
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
             if "last" in f and f.endswith(".ckpt") and not is_partial(f)]
    return max(found, key=os.path.getmtime) if found else None
