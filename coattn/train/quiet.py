"""Lightning notes that coattn causes on purpose, silenced by their exact message, and only those.

A new user's first fit printed four notes that say nothing about their run:

    Tip: ... try installing litlogger ...                    an advertisement (logging, every trainer)
    Checkpoint directory <dir> exists and is not empty.      coattn's run-folder lock file is in it (a fresh
                                                             fit), or the run is resumed; a fresh start over
                                                             a run's checkpoints is refused at start-up
    You have overridden `on_after_batch_transfer` in         CoAttnRetrieval moves the batch to the device
    `LightningModule` but have passed in a                   itself on purpose; the data module has no such
    `LightningDataModule`. ...                               hook
    Found N module(s) in eval mode at the start of           the encoders keep frozen towers, SpecAugment
    training. ...                                            when off and a frozen input BatchNorm in eval
                                                             mode on purpose (their ``train`` overrides)

The first three are silenced whenever the coattn CLI runs (``install``). The fourth only when every
module in eval mode stays in eval through ``model.train()`` (``eval_modules_on_purpose``): a module left
in eval mode by mistake still warns. Every other warning (e.g. ``log_every_n_steps`` larger than an epoch) is kept.
"""
from __future__ import annotations

import logging
import re
import warnings

# exact messages (regular expressions matched at the start of the warning's text)
BENIGN_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty\.$",
    re.escape("You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a "
              "`LightningDataModule`. It will use the implementation from `LightningModule` instance."),
)
LITLOGGER_TIP = "Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # where Lightning's rank_zero_info logs


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LITLOGGER_TIP not in record.getMessage()


def install() -> None:
    """Silence the notes coattn always causes on purpose (idempotent)."""
    for message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
        logger.addFilter(_DropLitLoggerTip())


def eval_modules_on_purpose(model) -> bool:
    """When every submodule of ``model`` in eval mode stays in eval mode even after ``model.train()`` (the
    encoders' ``train`` keeps frozen towers, a switched-off SpecAugment and a frozen input BatchNorm in
    eval on purpose), silence Lightning's "Found N module(s) in eval mode" for that exact N and return
    True; otherwise (a module left in eval by mistake) leave the warning on and return False. Every
    module's mode is restored exactly afterwards."""
    modules = list(model.named_modules())
    saved = [m.training for _, m in modules]
    in_eval = {name for name, m in modules if not m.training}
    if not in_eval:
        return False
    try:
        model.train(True)
        held = {name for name, m in modules if not m.training}
    finally:
        for (_, m), mode in zip(modules, saved):
            m.training = mode  # the attribute itself: no train() override runs again
    if not in_eval <= held:
        return False
    warnings.filterwarnings("ignore", message=re.escape(f"Found {len(in_eval)} module(s) in eval mode at the "
                                                        "start of training."))
    return True
