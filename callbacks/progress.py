"""``LogFriendlyProgressBar``: tqdm bars in a terminal, sparse plain lines in logs.

In a terminal it is Lightning's TQDMProgressBar. When stdout is not a terminal (CI, nohup, a
cluster's log file) a carriage-return bar refreshed every step turns into megabytes of noise, so
it updates at most every ``log_interval_s`` seconds (or every ``log_refresh_rate`` steps),
with ASCII characters and a fixed width, hides the evaluation bars, and prints one summary line
per epoch (``epoch 3 | train/loss 1.234 | val/t2a_mAP@10 0.456 ...``).
"""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override


class LogFriendlyProgressBar(TQDMProgressBar):
    """Args:
        refresh_rate: steps between updates in a terminal.
        log_refresh_rate: steps between updates when not in a terminal.
        log_interval_s: minimum seconds between updates when not in a terminal.
        interactive: force terminal (True) or log (False) behaviour; default: ``sys.stdout.isatty()``
            (the bars' stream).
        epoch_summary: print one line of metrics per epoch when not in a terminal.
    """

    def __init__(self, refresh_rate: int = 1, log_refresh_rate: int = 50, log_interval_s: float = 30.0,
                 interactive: bool | None = None, epoch_summary: bool = True, leave: bool = False):
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        super().__init__(refresh_rate=refresh_rate if self.interactive else log_refresh_rate,
                         leave=leave or not self.interactive)
        self.log_interval_s, self.epoch_summary = log_interval_s, epoch_summary

    def _quiet(self, bar: Tqdm) -> Tqdm:
        if not self.interactive:
            bar.mininterval, bar.maxinterval = self.log_interval_s, max(self.log_interval_s, bar.maxinterval)
            bar.ascii, bar.dynamic_ncols, bar.ncols = True, False, 100
        return bar

    @override
    def init_train_tqdm(self) -> Tqdm:
        return self._quiet(super().init_train_tqdm())

    @override
    def init_validation_tqdm(self) -> Tqdm:
        return super().init_validation_tqdm() if self.interactive else Tqdm(disable=True)

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        return super().init_sanity_tqdm() if self.interactive else Tqdm(disable=True)

    @override
    def init_test_tqdm(self) -> Tqdm:
        return self._quiet(super().init_test_tqdm())

    @override
    def init_predict_tqdm(self) -> Tqdm:
        return self._quiet(super().init_predict_tqdm())

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.interactive or not self.epoch_summary or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.state.fn != "fit":
            return
        parts = [f"epoch {trainer.current_epoch}", f"step {trainer.global_step}"]
        for k, v in trainer.callback_metrics.items():
            if k.startswith(("train/", "val/")) and getattr(v, "numel", lambda: 1)() == 1:
                parts.append(f"{k} {float(v):.4f}")
        print(" | ".join(parts), flush=True)
