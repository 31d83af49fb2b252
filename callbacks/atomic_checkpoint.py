"""``KeepLastCheckpoint``: keep ``last.ckpt`` current at every epoch, whatever the monitored metric does.

Lightning 2.6.6's ``ModelCheckpoint(monitor=..., save_top_k=k, save_last=True)`` rewrites
``last.ckpt`` only when a top-k checkpoint was saved at the same step ("Only save last checkpoint
if a checkpoint was actually saved in this step"): once the validation metric stops improving,
``last.ckpt`` goes stale and ``--ckpt_path last`` silently resumes from an older epoch. This
callback, added by the CLI (``coattn.train.cli``) whenever a ``ModelCheckpoint`` has
``save_last``, writes that callback's ``last.ckpt`` at the end of every epoch it did not.

It is a ``Checkpoint`` so that Lightning orders it after the ``ModelCheckpoint`` callbacks (their
top-k decision comes first). The write itself goes through the trainer's CheckpointIO
(``coattn.train.checkpoints.SafeCheckpointIO``: temp file + fsync + ``os.replace``).
"""
from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint


class KeepLastCheckpoint(Checkpoint):
    """Refresh every ``ModelCheckpoint(save_last=...)``'s last checkpoint once per epoch (module docstring)."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._refresh(trainer, train_epoch_end=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._refresh(trainer, train_epoch_end=True)

    def _refresh(self, trainer: Trainer, train_epoch_end: bool) -> None:
        if trainer.fast_dev_run or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb._should_save_on_train_epoch_end(
                    trainer) != train_epoch_end:
                continue
            every = cb._every_n_epochs
            if every < 1 or (trainer.current_epoch + 1) % every != 0:
                continue
            if cb._last_global_step_saved == trainer.global_step and cb._last_checkpoint_saved == cb.last_model_path:
                continue  # ModelCheckpoint wrote last.ckpt at this step itself
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
