"""``StopOnSigterm``: a SIGTERM (Slurm, Kubernetes, ``kill``) saves ``last.ckpt`` mid-epoch and ends the
run with exit code 143, so that ``coattn fit ... && coattn test ...`` stops and
``coattn fit ... --ckpt_path last`` continues from the step where it stopped.

    kill -TERM <pid of coattn fit>        # or: kill -TERM -<process group>, scancel, kubectl delete pod
    coattn: stopped by SIGTERM at global step 5 (epoch 1, batch 2): saved runs/demo/checkpoints/last.ckpt ...
    echo $?                               # 143

Built on Lightning 2.6.6's own handling: its signal connector records the SIGTERM
(``trainer.received_sigterm``), forwards it to DDP worker processes it launched, and the loops raise
``SIGTERMException`` after the current training batch (or evaluation batch). Lightning then calls
``on_exception`` and re-raises it; as a bare ``SystemExit`` it would end the process with status 0 and
no checkpoint. This callback saves in ``on_exception`` (every ``ModelCheckpoint`` with ``save_last``
writes its last checkpoint, through the trainer's atomic CheckpointIO; without one, ``last.ckpt`` in
the checkpoint callback's folder) and prints one line; the CLI turns the exception into exit code 143
(coattn/train/cli.py). DataLoader workers ignore SIGTERM (data_modules/base.py), so a signal to the
whole process group ends the run the same way, without "DataLoader worker ... killed" tracebacks.

A SIGTERM while a fit validates (after the epoch's last training batch) saves the same way and
records the epoch in the checkpoint; ``--ckpt_path last`` then validates that epoch before going on
(its metrics logged, a candidate for ``best.ckpt``), where Lightning alone would skip it.

Lightning's SLURM conventions stay as they are: with auto-requeue (``SLURMEnvironment``, the default
under Slurm), ``#SBATCH --signal=SIGUSR1@90`` makes Lightning save ``hpc_ckpt_<n>.ckpt`` in
``default_root_dir`` and requeue the job, and the requeued command resumes from it by itself
(the CLI lets such a fit start over its folder). Under Slurm a SIGTERM also lands here.
On by default under ``coattn fit / validate / test / predict``.
"""
from __future__ import annotations

import os
import sys

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopOnSigterm(Callback):
    """On SIGTERM: save the last checkpoint(s) mid-epoch and say so in one line (module docstring).
    A SIGTERM during a fit's validation is recorded in the checkpoint; the resumed fit validates that
    epoch first (Lightning 2.6.6 would skip it: its training batches were all done)."""

    def __init__(self):
        self._interrupted_validation: int | None = None  # epoch whose validation a SIGTERM stopped
        self._validate_first: int | None = None  # the same, read from the checkpoint a fit resumes

    def state_dict(self) -> dict:
        return {} if self._interrupted_validation is None else {"validation_interrupted": self._interrupted_validation}

    def load_state_dict(self, state_dict: dict) -> None:
        self._validate_first = state_dict.get("validation_interrupted")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch, self._validate_first = self._validate_first, None
        loop = trainer.fit_loop.epoch_loop.val_loop
        if epoch is None or trainer.current_epoch != epoch or loop.restarted_mid_evaluation:
            return  # (Lightning finishes a validation it sees was cut mid-batch itself)
        if trainer.is_global_zero:
            print(f"coattn: validating epoch {epoch} first: a SIGTERM stopped its validation", file=sys.stderr)
        loop.restarting = False
        loop.run()  # logs val/... for this epoch; ModelCheckpoint saves best / last from it

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and trainer.validating and not trainer.sanity_checking:
            self._interrupted_validation = trainer.current_epoch
        where = (f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                 f"{trainer.fit_loop.epoch_loop.batch_idx})" if fitting else f"during {trainer.state.fn.value}")
        saved = self._save(trainer) if fitting else []
        if not trainer.is_global_zero:
            return
        if saved:
            what = (f"saved {', '.join(saved)} (mid-epoch); continue with the same command and --ckpt_path last"
                    + (f" (it validates epoch {self._interrupted_validation} first)"
                       if self._interrupted_validation is not None else ""))
        elif fitting:
            what = "nothing saved (no checkpoint callback: trainer.enable_checkpointing is off)"
        else:
            what = f"the {trainer.state.fn.value} run is incomplete; nothing was written"
        print(f"coattn: stopped by SIGTERM at {where}: {what}; exit code 143", file=sys.stderr, flush=True)

    @staticmethod
    def _save(trainer: Trainer) -> list[str]:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return []
        saved = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last:
                cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
                saved.append(cb.last_model_path)
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if not saved and folder:  # a ModelCheckpoint without save_last: still leave something to resume from
            path = os.path.join(folder, "last.ckpt")
            trainer.save_checkpoint(path)
            saved.append(path)
        return saved
