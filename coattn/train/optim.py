"""``Optim``: AdamW with per-tower learning rates, warm-up and cosine decay (the ``model.optim`` group).

Parameter groups: the text encoder at ``encoder_lr``, the audio encoder at ``audio_encoder_lr``
(``encoder_lr`` if null), everything else (cascade, heads, temperatures) at ``lr``; no weight decay
on biases, norms and temperatures (any parameter with fewer than 2 dimensions, and ``log_scale``).
The learning rate rises linearly for ``warmup_steps`` (at most half the run), then follows a cosine
to 0 at the last step (``trainer.estimated_stepping_batches``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from coattn.errors import ConfigError


@dataclass
class Optim:
    """AdamW settings (module docstring).

    Args:
        lr: learning rate of everything but the encoders.
        encoder_lr: learning rate of the (unfrozen) encoders.
        audio_encoder_lr: learning rate of the audio encoder when it should differ from the text
            encoder's (null = ``encoder_lr``), e.g. a pretrained CLAP audio tower fine-tuned gently
            under a text tower trained from scratch; 0 trains it in training mode without moving its
            weights (a diagnostic used in README, "Training HTS-AT from scratch").
        weight_decay: AdamW weight decay (not applied to biases, norms, temperatures).
        warmup_steps: linear warm-up steps, then cosine decay to 0 over the run.
    """

    lr: float = 1e-4
    encoder_lr: float = 1e-5
    audio_encoder_lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 100

    def __post_init__(self) -> None:
        for name in ("lr", "encoder_lr", "audio_encoder_lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"model.optim.{name} must be a finite number >= 0, got {value}")
        if self.warmup_steps < 0:
            raise ConfigError(f"model.optim.warmup_steps must be >= 0, got {self.warmup_steps}")

    def build(self, module: torch.nn.Module, text_encoder: torch.nn.Module, audio_encoder: torch.nn.Module,
              total_steps: int) -> dict:
        """What ``LightningModule.configure_optimizers`` returns for ``module``'s trainable parameters."""
        audio_lr = self.encoder_lr if self.audio_encoder_lr is None else self.audio_encoder_lr
        lr_of = {id(p): self.encoder_lr for p in text_encoder.parameters()}
        lr_of.update({id(p): audio_lr for p in audio_encoder.parameters()})
        groups: dict[tuple[float, bool], list] = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "log_scale" in name  # biases, norms, temperatures
            groups.setdefault((lr_of.get(id(p), self.lr), no_decay), []).append(p)
        params = [{"params": ps, "lr": lr, "weight_decay": 0.0 if no_decay else self.weight_decay}
                  for (lr, no_decay), ps in groups.items()]
        opt = torch.optim.AdamW(params)
        total = max(1, int(total_steps))
        warm = min(self.warmup_steps, total // 2)

        def factor(step: int) -> float:  # linear warm-up, then cosine to 0
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
