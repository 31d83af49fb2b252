"""Read LAION-CLAP checkpoints safely and load one branch of them into a module, loudly.

Why a module of its own: the audio (``audio_branch.*``) and text (``text_branch.*``) encoders and the
dual heads all load from the same official file, and all must fail at start-up, naming the file,
when it is missing, unsafe or does not fit, instead of training on silently random weights. Reading
the file is ``coattn.io.load_checkpoint`` (weights only), as for every checkpoint.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from coattn.errors import CheckpointError
from coattn.io import load_checkpoint

log = logging.getLogger(__name__)

HOW_TO_GET = (
    "Download an official non-fusion LAION-CLAP checkpoint, e.g. 630k-audioset-best.pt from "
    "https://huggingface.co/lukewys/laion_clap, and put its path in the YAML as the encoder's init arg "
    "(`checkpoint:` of ClapAudioEncoder, `clap_checkpoint:` of HFTextEncoder)."
)
# buffers that old transformers versions saved and new ones recompute (LAION-CLAP drops it too)
BENIGN_UNEXPECTED = ("embeddings.position_ids", "embeddings.token_type_ids")
# HTS-AT submodules that exist only when enable_fusion=True (laion_clap/clap_module/htsat.py)
FUSION_MARKERS = ("fusion_model", "mel_conv1d", "mel_conv2d")


def load_clap_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a LAION-CLAP checkpoint as a flat ``{key: tensor}`` dict, never unpickling code.

    Accepts the official ``{"state_dict": ..., "epoch": ..., ...}`` wrapper (pickle protocol 4, numpy
    scalars: ``coattn.io.load_checkpoint(numpy_scalars=True)``) or a bare state dict, and strips the
    ``module.`` prefix DataParallel/DDP training left on every key.
    """
    obj = load_checkpoint(path, numpy_scalars=True, hint=HOW_TO_GET)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} holds no state dict of tensors (top level: {type(obj).__name__}). "
                              f"{HOW_TO_GET}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def select_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. ``"audio_branch."``) with the prefix stripped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def reject_fusion(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse feature-fusion checkpoints: their HTS-AT takes fused mel inputs coattn does not build."""
    hits = [k for k in state if any(m in k for m in FUSION_MARKERS)]
    if hits or "fusion" in Path(path).name.lower():
        why = f"it has fusion weights, e.g. {hits[0]!r}" if hits else "its file name says 'fusion'"
        raise CheckpointError(
            f"{str(path)!r} is a feature-fusion CLAP checkpoint ({why}); fusion is not supported: use a "
            "non-fusion checkpoint such as 630k-audioset-best.pt from https://huggingface.co/lukewys/laion_clap."
        )


def load_branch(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, target: str) -> None:
    """Load ``state`` into ``module`` non-strictly, log what did not match, raise if it does not fit.

    Raises ``CheckpointError`` (naming ``source`` = the file and ``target`` = the config) when no
    key matches or any matching key has the wrong shape (e.g. an HTSAT-tiny file into HTSAT-base);
    missing and unexpected keys are otherwise only logged, as torch's ``strict=False`` would hide them.
    """
    own = module.state_dict()
    matched = [k for k in state if k in own]
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in matched if state[k].shape != own[k].shape]
    if not matched:
        raise CheckpointError(
            f"no key of {source!r} matches {target}: file keys look like {sorted(state)[:5]}, "
            f"model keys like {sorted(own)[:5]}. {HOW_TO_GET}"
        )
    if bad_shapes:
        raise CheckpointError(
            f"{source!r} does not fit {target}: {len(bad_shapes)} shape mismatches, e.g. {bad_shapes[:3]}. "
            "Pick the config the checkpoint was trained with (630k-*.pt files are HTSAT-tiny)."
        )
    result = module.load_state_dict({k: state[k] for k in matched}, strict=False)
    unexpected = [k for k in state if k not in own and not k.endswith(BENIGN_UNEXPECTED)]
    log.info("loaded %d/%d tensors of %s from %s", len(matched), len(own), target, source)
    if result.missing_keys:
        log.warning("%s: %d keys missing from %s (left at their initial values): %s",
                    target, len(result.missing_keys), source, result.missing_keys[:10])
    if unexpected:
        log.warning("%s: %d unexpected keys in %s (ignored): %s", target, len(unexpected), source, unexpected[:10])
