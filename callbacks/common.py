"""Helpers shared by the callbacks (no Lightning collectives: safe to call on rank 0 alone)."""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def run_dir(trainer: Trainer) -> Path:
    """``trainer.log_dir`` without its broadcast (callers may run on rank 0 only)."""
    if trainer.loggers:
        first = trainer.loggers[0]
        d = first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir
        if d:
            return Path(d)
    return Path(trainer.default_root_dir)


def want_files(trainer: Trainer, write_files: bool | None) -> bool:
    """Files in the run folder: always (True), never (False), or when no W&B logger is set (None)."""
    return (not wandb_loggers(trainer)) if write_files is None else write_files


def due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Every n-th epoch, the last epoch, and always outside fit (validate/test)."""
    if trainer.state.fn != "fit":
        return True
    last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
    return every_n_epochs > 0 and ((trainer.current_epoch + 1) % every_n_epochs == 0 or last)


def taken_steps(trainer: Trainer) -> int:
    """The step to log images/tables at: the trainer's global step (monotonic for W&B)."""
    return int(trainer.global_step)
