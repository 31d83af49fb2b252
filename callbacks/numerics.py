"""``NonFiniteGuard``: stop training at the first NaN/Inf loss or gradient, before it touches the model.

    trainer:
      callbacks:
        - class_path: callbacks.numerics.NonFiniteGuard   # on by default under `coattn fit`
          init_args: {check_grads: true}

* ``on_before_backward``: the loss of the step. If it is NaN or Inf (on any rank under DDP: the
  decision is all-reduced, so no rank is left waiting in a collective), raise ``NonFiniteError``
  naming the global step, epoch, batch and every loss term (``train/pair_loss``,
  ``train/dual_loss``... from the module's ``last_losses``, as ``CoAttnRetrieval`` keeps them) with its value.
* ``on_before_optimizer_step`` (``check_grads``): a finite loss can still give Inf gradients;
  the first parameters with non-finite gradients are named.

Both stop *before* ``optimizer.step()``, so the weights stay those of the previous step and no
checkpoint of a NaN model is ever written (``coattn.train.checkpoints.SafeCheckpointIO`` refuses that as well);
``last.ckpt`` is the last good state. Gradient clipping is ``trainer.gradient_clip_val``.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from coattn.errors import NonFiniteError


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return repr(v)


class NonFiniteGuard(Callback):
    """Raise ``NonFiniteError`` on a NaN/Inf loss (and, with ``check_grads``, gradient); see module docstring."""

    def __init__(self, check_grads: bool = True):
        self.check_grads = check_grads

    def _where(self, trainer: Trainer) -> str:
        batch = trainer.fit_loop.epoch_loop.batch_idx
        return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch})"

    def _last_good(self, trainer: Trainer) -> str:
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") if ckpt else ""
        return (f"the last good checkpoint {path} is intact" if path else
                "no checkpoint was written yet in this run")

    def _any(self, trainer: Trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not self._any(trainer, bad):
            return
        terms = getattr(pl_module, "last_losses", None) or {"loss": loss}  # any LightningModule may host this
        values = ", ".join(f"train/{k} = {_fmt(v)}" for k, v in terms.items())
        bad_terms = [f"train/{k}" for k, v in terms.items()
                     if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())]
        which = f"non-finite term(s): {', '.join(bad_terms)}" if bad_terms else "on another rank"
        raise NonFiniteError(
            f"non-finite training loss at {self._where(trainer)}: {which} ({values}). Training stopped before "
            f"the update, so the weights are those of the previous step and {self._last_good(trainer)}. "
            "Lower the learning rate, set trainer.gradient_clip_val (e.g. 1.0), or use 32-bit precision.")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self.check_grads:
            return
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all())
        if not self._any(trainer, bad):
            return
        names = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        raise NonFiniteError(
            f"non-finite gradients at {self._where(trainer)} in {len(names)} parameter(s), e.g. {names[:3]}"
            f"{'' if names else ' (on another rank)'}; the loss was finite. Training stopped before the update "
            f"and {self._last_good(trainer)}. Set trainer.gradient_clip_val or lower the learning rate.")
