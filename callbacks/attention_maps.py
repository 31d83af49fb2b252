"""``AttentionMaps``: word x audio-frame co-attention heatmaps, one panel per layer and direction.

After each (n-th) validation, a few fixed validation pairs (the first caption of each of the
first ``num_examples`` clips, with that clip) go through the model; the maps and figures are the
library's (``coattn.attention_maps``: which directions each cascade has, heads averaged), the
same ``coattn serve`` shows beside each hit.

One PNG per example (all panels) is logged as W&B images (``<stage>/attention_maps``) and/or
written to ``<run dir>/attention_maps/<stage>_epoch<NNN>_ex<i>.png`` (by default: files when no
WandbLogger is set). Figures are drawn without pyplot (no display, no backend needed).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks.common import due, run_dir, taken_steps, wandb_loggers, want_files
from coattn.attention_maps import attention_examples, attention_figure, attention_panels

log = logging.getLogger(__name__)


class AttentionMaps(Callback):
    """Args:
        num_examples: validation pairs drawn (first caption of the first N clips).
        every_n_epochs: during fit, draw every n-th validation (and the last).
        write_files: PNG files in the run folder: True, False, or None = only without W&B.
        dpi: resolution of the images.
    """

    def __init__(self, num_examples: int = 2, every_n_epochs: int = 1, write_files: bool | None = None,
                 dpi: int = 90):
        self.num_examples, self.every_n_epochs = num_examples, every_n_epochs
        self.write_files, self.dpi = write_files, dpi

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not due(trainer, self.every_n_epochs):
            return
        if pl_module.model.cascade.kind == "none":
            return
        try:
            examples = self.capture(trainer, pl_module)
        except Exception as exc:  # diagnostics must never kill a training run
            log.warning("AttentionMaps: skipped (%s: %s)", type(exc).__name__, exc)
            return
        self.publish(trainer, examples, "val")

    # ---- capture -------------------------------------------------------------------------------
    def pairs(self, trainer: Trainer, stage: str = "val") -> tuple[list[str], list[Path], list[str]]:
        split = trainer.datamodule.split(stage)
        n = min(self.num_examples, len(split))
        return [split.captions[i][0] for i in range(n)], [split.paths[i] for i in range(n)], split.fnames[:n]

    @torch.no_grad()
    def capture(self, trainer: Trainer, pl_module: LightningModule, stage: str = "val") -> list[dict]:
        """[{caption, fname, tokens, panels: [(title, (words, frames) array)]}] for each example."""
        from coattn.audio import load_clip

        dm = trainer.datamodule
        captions, paths, fnames = self.pairs(trainer, stage)
        wave = torch.stack([load_clip(p, dm.sample_rate, dm.num_samples, mode=dm.eval_crop) for p in paths])
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                audio = model.encode_audio(wave.to(pl_module.device))
                return attention_examples(model, audio, captions, names=fnames)
        finally:
            model.train(was_training)

    panels = staticmethod(attention_panels)  # (title, words x frames) per layer: tests/test_callbacks.py

    # ---- drawing -------------------------------------------------------------------------------
    def publish(self, trainer: Trainer, examples: list[dict], stage: str) -> list[Path]:
        files, images = [], []
        to_files = want_files(trainer, self.write_files)
        loggers = wandb_loggers(trainer)
        out = run_dir(trainer) / "attention_maps"
        for i, ex in enumerate(examples):
            if not ex["panels"]:
                continue
            fig = attention_figure(ex)
            if to_files:
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{stage}_epoch{trainer.current_epoch:03d}_ex{i}.png"
                fig.savefig(path, dpi=self.dpi)
                files.append(path)
            if loggers:
                import wandb

                images.append(wandb.Image(fig, caption=f"{ex['fname']}: {ex['caption']}"))
        for lg in loggers:
            if images:
                lg.log_metrics({f"{stage}/attention_maps": images}, step=taken_steps(trainer))
        return files
