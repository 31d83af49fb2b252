"""``AttentionMaps``: word x audio-frame co-attention heatmaps, one panel per layer and direction.

After each (n-th) validation, a few fixed validation pairs (the first caption of each of the
first ``num_examples`` clips, with that clip) go through the model with
``coattn.coattention.capture_attention``, which records the guided (cross-modal) attention
weights, averaged over heads here:

* ``single`` / ``stacking``: both directions per layer: text->audio (each word attends over the
  32 frames) and audio->text (each frame attends over the words, drawn transposed so every panel
  is words x frames);
* ``iterating``: the audio-queries-text direction of each of the N audio layers (the text
  stream never attends to the audio).

One PNG per example (all panels) is logged as W&B images (``<stage>/attention_maps``) and/or
written to ``<run dir>/attention_maps/<stage>_epoch<NNN>_ex<i>.png`` (by default: files when no
WandbLogger is set). Matplotlib runs with the Agg backend (no display needed).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks.common import due, run_dir, taken_steps, wandb_loggers, want_files
from coattn.coattention import capture_attention

log = logging.getLogger(__name__)
_LAYER = re.compile(r"^(text|audio)_layers\.(\d+)\.")


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
            with trainer.precision_plugin.forward_context(), capture_attention(model.cascade, "guided") as maps:
                audio = model.encode_audio(wave.to(pl_module.device))
                text = model.encode_text(captions)
                idx = torch.arange(len(captions), device=pl_module.device)
                model.score_pairs(model.prepare_text(text), idx, model.prepare_audio(audio), idx)
        finally:
            model.train(was_training)
        enc = model.text_encoder
        ids = enc.tokenize(captions)["input_ids"]
        mask = text.mask.cpu()
        out = []
        for i, cap in enumerate(captions):
            n_words = int(mask[i].sum())
            tokens = [t.replace("\u0120", "").replace("Ġ", "") or "_" for t in
                      enc.tokenizer.convert_ids_to_tokens(ids[i, :n_words].tolist())]
            out.append({"caption": cap, "fname": fnames[i], "tokens": tokens,
                        "panels": self.panels(maps, i, n_words)})
        return out

    @staticmethod
    def panels(maps: dict[str, list[torch.Tensor]], i: int, n_words: int) -> list[tuple[str, torch.Tensor]]:
        """(title, words x frames) per layer and direction, in layer order."""
        items = []
        for name, calls in maps.items():
            m = _LAYER.match(name)
            if not m or not calls:
                continue
            stream, layer = m.group(1), int(m.group(2))
            for c, w in enumerate(calls):  # shared weights: one module called once per layer
                n = layer + c + 1
                a = w[i].float().mean(0).cpu()  # heads averaged: (Lq, Lk)
                if stream == "text":  # words query the frames
                    items.append((n, 0, f"layer {n}: text->audio", a[:n_words]))
                else:  # frames query the words: transpose to words x frames
                    items.append((n, 1, f"layer {n}: audio->text", a[:, :n_words].t()))
        return [(title, mat) for _, _, title, mat in sorted(items, key=lambda t: (t[0], t[1]))]

    # ---- drawing -------------------------------------------------------------------------------
    def figure(self, ex: dict):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        panels = ex["panels"]
        cols = min(2, len(panels)) or 1
        rows = (len(panels) + cols - 1) // cols
        h = max(1.6, 0.22 * len(ex["tokens"]) + 0.9)
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, h * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        for ax, (title, mat) in zip(axes.flat, panels):
            im = ax.imshow(mat.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
            ax.set_title(title, fontsize=8)
            ax.set_yticks(range(len(ex["tokens"])))
            ax.set_yticklabels(ex["tokens"], fontsize=6)
            ax.set_xlabel("audio frame (~0.31 s)", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.04)
        fig.suptitle(f"{ex['fname']}: \"{ex['caption']}\"", fontsize=8)
        fig.tight_layout()
        return fig

    def publish(self, trainer: Trainer, examples: list[dict], stage: str) -> list[Path]:
        import matplotlib.pyplot as plt

        files, images = [], []
        to_files = want_files(trainer, self.write_files)
        loggers = wandb_loggers(trainer)
        out = run_dir(trainer) / "attention_maps"
        for i, ex in enumerate(examples):
            if not ex["panels"]:
                continue
            fig = self.figure(ex)
            if to_files:
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{stage}_epoch{trainer.current_epoch:03d}_ex{i}.png"
                fig.savefig(path, dpi=self.dpi)
                files.append(path)
            if loggers:
                import wandb

                images.append(wandb.Image(fig, caption=f"{ex['fname']}: {ex['caption']}"))
            plt.close(fig)
        for lg in loggers:
            if images:
                lg.log_metrics({f"{stage}/attention_maps": images}, step=taken_steps(trainer))
        return files
