"""Warm start: the towers and dual heads of a trained coattn checkpoint start a new fit.

    coattn fit --config experiments/demo_dual.yaml          # stage 1: the towers learn to align (cascade none)
    coattn fit --config experiments/demo.yaml               # stage 2: model.init_from = stage 1's best.ckpt

The paper's towers come pretrained and aligned (CLAP audio, RoBERTa text), so its cascade learns on
top of features in which "which events" is already solved; from scratch in a CPU budget, the
cascade's extra parameters otherwise compete with the towers for that same easy signal. What is
copied: every tensor under ``model.audio_encoder.``, ``model.text_encoder.``, ``model.dual_audio.``,
``model.dual_text.``, ``model.dual_temperature.``, and the per-run tokenizer. The cascade, its input
and pair heads start fresh. A checkpoint whose towers do not fit this model's is an error naming
the tensors.
"""
from __future__ import annotations

import os

from coattn.errors import CheckpointError
from coattn.io import load_checkpoint

PARTS = ("audio_encoder.", "text_encoder.", "dual_audio.", "dual_text.", "dual_temperature.")


def warm_start(model, path: str | os.PathLike) -> int:
    """Copy the towers and dual heads of the checkpoint at ``path`` into ``model`` (a CoAttnModel); returns
    how many tensors were copied."""
    ckpt = load_checkpoint(path, hint="model.init_from names stage 1 of a two-stage recipe: train it first (e.g. "
                           "`coattn fit --config experiments/demo_dual.yaml`), or set model.init_from: null.")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"model.init_from {str(path)!r} is not a checkpoint of `coattn fit` (no 'state_dict')")
    theirs = {k[len("model."):]: v for k, v in state.items()
              if k.startswith("model.") and k[len("model."):].startswith(PARTS)}
    own = {k: v for k, v in model.state_dict().items() if k.startswith(PARTS)}
    missing = sorted(set(own) - set(theirs))
    shapes = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in theirs and theirs[k].shape != v.shape]
    if missing or shapes:
        raise CheckpointError(f"model.init_from {str(path)!r}: its towers / dual heads do not fit this model "
                              f"({len(missing)} missing, e.g. {missing[:3]}; {len(shapes)} of another shape, e.g. "
                              f"{shapes[:2]}): use the same encoders and embed_dim as the run that made it")
    model.load_state_dict({k: theirs[k] for k in own}, strict=False)
    if ckpt.get("tokenizer_state") is not None:  # a per-run tokenizer belongs to the text tower's weights
        model.text_encoder.load_tokenizer_state(ckpt["tokenizer_state"])
    return len(own)


def hold_frozen(parts) -> None:
    """No gradient and eval mode for ``parts`` (``freeze_dual``: the dual heads as loaded, BatchNorm included).
    Called at construction and from the module's ``train()``: Lightning 2 starts fitting in the modes it finds
    (it never calls ``.train()``) and after each validation restores every submodule's mode by setting
    ``.training``, so a part frozen only in ``train()`` would update its BatchNorm statistics while fitting."""
    for part in parts:
        part.requires_grad_(False).train(False)
