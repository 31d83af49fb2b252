"""Exported moment models: a ``coattn export`` folder (coattn/hub.py: the CoAttnModel's weights, config.json,
tokenizer, card) plus the moment part:

    moment.json          MomentModel's arguments (hidden, nms_iou, top_k, dual_spans, stream, stream_width,
                         index_hop, decode,
                         max_window, prior, prior_window, context) and the
                         head's format
    moment.safetensors   the weights outside the CoAttnModel (``head.*``, and ``film.*`` for ``stream: dual``)

``load_moment_folder(folder)`` gives the MomentModel back (``coattn localize --model FOLDER``, ``coattn serve``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from coattn.errors import CheckpointError
from coattn.io import atomic_write_bytes, atomic_write_text
from coattn.moments.model import MomentModel

MOMENT_CONFIG, MOMENT_WEIGHTS = "moment.json", "moment.safetensors"
FORMAT = "coattn-moment-1"


def moment_args(mm: MomentModel) -> dict:
    hidden = mm.head.mlp[0].out_features
    return {"hidden": hidden, "nms_iou": mm.nms_iou, "top_k": mm.top_k, "dual_spans": list(mm.dual_spans),
            "stream": mm.stream, "stream_width": getattr(getattr(mm, "film", None), "width", 256),
            "index_hop": mm.index_hop, "decode": mm.decode, "max_window": mm.max_window, "prior": mm.prior,
            "prior_window": mm.prior_window, "context": mm.context, "format": FORMAT}


def is_moment_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MOMENT_CONFIG).is_file()


def save_moment_folder(mm: MomentModel, folder: str | os.PathLike) -> None:
    """The moment part next to an exported CoAttnModel folder (module docstring)."""
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in mm.state_dict().items() if not k.startswith("model.")}
    atomic_write_bytes(folder / MOMENT_WEIGHTS, save(state, metadata={"format": "pt", "coattn_format": FORMAT}))
    atomic_write_text(folder / MOMENT_CONFIG, json.dumps(moment_args(mm), indent=2, sort_keys=True) + "\n")


def load_moment_folder(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> MomentModel:
    """The MomentModel of an exported moment folder, eval mode."""
    from safetensors.torch import load_file

    from coattn.model import CoAttnModel

    folder = Path(folder)
    if not is_moment_folder(folder):
        raise CheckpointError(f"{folder}: no {MOMENT_CONFIG}; export a moment checkpoint with `coattn export`")
    args = json.loads((folder / MOMENT_CONFIG).read_text(encoding="utf-8"))
    if args.pop("format", None) != FORMAT:
        raise CheckpointError(f"{folder / MOMENT_CONFIG}: not a {FORMAT} file")
    model = CoAttnModel.from_pretrained(str(folder), map_location="cpu")
    args["dual_spans"] = tuple(args["dual_spans"])
    args.setdefault("decode", "frames")  # folders from before the key: their decoder
    mm = MomentModel(model, **args)
    missing, unexpected = mm.load_state_dict(load_file(str(folder / MOMENT_WEIGHTS)), strict=False)
    missing = [k for k in missing if not k.startswith("model.")]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: moment weights do not fit moment.json ({missing[:3]} {unexpected[:3]})")
    return mm.to(map_location).eval()
