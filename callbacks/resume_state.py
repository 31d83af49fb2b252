"""``RngState``: the global random states (torch, CUDA, numpy, Python) in every checkpoint.

Lightning 2.6 does not save them, so a resumed run would draw different dropout masks than the
uninterrupted one. Saved as tensors and plain values (loadable with ``weights_only=True``) and
restored when a fit resumes (``load_state_dict`` runs while Lightning restores the training
state, before the next epoch draws anything). The data order does not depend on them: the
sampler is seeded per epoch (``data_modules.datasets.EpochSampler``). Under DDP every rank receives
rank 0's states; ranks are seeded alike by ``seed_everything`` and consume them in lockstep.
On by default under ``coattn fit`` (``coattn.train.cli``).

``ResumeCheck``: what a resumed fit does differently from the run it continues. The settings that
shape an epoch (batch size, items per epoch, batches per epoch, gradient accumulation, number of
processes, data seed) are stored in each checkpoint; a fit resumed with other values still
continues (the step and epoch counters and the step-based LR schedule come from the checkpoint),
but one warning lists each change and what it means. A fit that ran no training step (a
checkpoint already at ``max_epochs``, an empty loader) says so too, instead of ending silently.
"""
from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch import Callback, LightningModule, Trainer


def collect_rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


class RngState(Callback):
    """Save the global RNG states with each checkpoint; restore them when ``fit`` resumes.

    A checkpoint taken mid-epoch (SIGTERM, ``every_n_train_steps``) is restored once more in
    ``on_train_start``: creating the epoch's DataLoader iterator draws from the global torch RNG
    (its worker base seed), which the uninterrupted run did at the epoch's start, before the
    checkpoint, and the resumed run does again after loading it.
    """

    def __init__(self):
        self._trainer: Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self._trainer
        mid_epoch = (t is not None and t.state.fn == "fit" and bool(t.num_training_batches) and
                     0 < t.fit_loop.epoch_loop.batch_progress.current.processed < t.num_training_batches)
        return {"rng": collect_rng_states(), "mid_epoch": mid_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])
            self._pending = state_dict["rng"] if state_dict.get("mid_epoch") else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class ResumeCheck(Callback):
    """Warn when a resumed fit changes the epoch, and when a fit trained nothing (module docstring)."""

    def __init__(self):
        self.saved: dict[str, Any] | None = None  # the settings of the run a checkpoint came from
        self.current: dict[str, Any] = {}
        self.steps_run = 0

    @staticmethod
    def epoch_settings(trainer: Trainer) -> dict[str, Any]:
        dm = trainer.datamodule
        out = {"data.init_args.batch_size": getattr(dm, "batch_size", None),
               "data.init_args.train_items": getattr(dm, "train_items", None),
               "data.init_args.seed": getattr(dm, "seed", None),
               "training items per epoch": sized_len(getattr(trainer.train_dataloader, "dataset", None)),
               "training batches per epoch": trainer.num_training_batches,
               "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
               "processes (devices x nodes)": trainer.world_size}
        return {k: (v if isinstance(v, (int, float, str)) or v is None else str(v)) for k, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_settings": self.current} if self.current else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = state_dict.get("epoch_settings")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.current = self.epoch_settings(trainer)
        self.steps_run = 0
        if not self.saved or not trainer.is_global_zero:
            return
        changed = [f"{k} {self.saved[k]} -> {v}" for k, v in self.current.items()
                   if k in self.saved and self.saved[k] != v]
        if changed:
            print(f"coattn: warning: resuming {trainer.ckpt_path} with settings that change the epoch: "
                  f"{'; '.join(changed)}. The step and epoch counters and the LR schedule (counted in steps) continue "
                  "from the checkpoint, the data order and epoch length are this run's: the result matches neither "
                  "an uninterrupted run with the old settings nor one with the new", file=sys.stderr)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.steps_run += 1

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.steps_run or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
            why = (f"the run already reached trainer.max_epochs={trainer.max_epochs}"
                   f"{f' (checkpoint {trainer.ckpt_path})' if trainer.ckpt_path else ''}; raise it to train on")
        elif 0 <= trainer.max_steps <= trainer.global_step:
            why = f"the run already reached trainer.max_steps={trainer.max_steps}; raise it to train on"
        else:
            why = f"the training loader gave {trainer.num_training_batches} batches"
        print(f"coattn: warning: this fit ran no training step: {why}", file=sys.stderr)
