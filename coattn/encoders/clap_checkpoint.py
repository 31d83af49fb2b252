"""Read LAION-CLAP checkpoints safely and load one branch of them into a module, loudly.

Why a module of its own: the audio (``audio_branch.*``) and text (``text_branch.*``) encoders both
load from the same official file, and both must fail at start-up, naming the file, when it is
missing, unsafe or does not fit, instead of training on silently random weights.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import pickle
import re
import types
import warnings
from pathlib import Path

import torch
from torch import nn

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


class CheckpointError(ValueError):
    """A pretrained checkpoint that exists but cannot be used (unsafe, fusion, wrong keys or shapes)."""


def file_identity(path: str | os.PathLike) -> str:
    """``path|mtime|size`` of a file: a cheap cache key that changes when the file is replaced."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return f"{p}|mtime={st.st_mtime_ns}|size={st.st_size}"


def _restricted_pickle() -> types.ModuleType:
    """A ``pickle_module`` for torch.load whose Unpickler resolves only allowlisted globals.

    Same guarantee as ``weights_only=True`` (the only way pickle runs code is through ``find_class``,
    and it returns nothing but torch's own weights-only allowlist and numpy scalar/array
    constructors), but built on Python's full unpickler, so every pickle protocol works.
    """
    import numpy as np

    allowed: dict[str, object] = {}
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # torch's weights_only allowlist

        allowed.update(_get_allowed_globals())
    except ImportError:  # private API moved: fall back to what a plain state dict needs
        allowed.update({"collections.OrderedDict": collections.OrderedDict, "torch.Size": torch.Size,
                        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter})
    multiarray = np.core.multiarray  # pickles name it numpy.core.* (numpy 1.x) or numpy._core.* (2.x)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{mod}.scalar"] = multiarray.scalar
        allowed[f"{mod}._reconstruct"] = multiarray._reconstruct
    allowed.update({"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray})

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            if module.startswith("numpy.dtypes") and name.endswith("DType"):  # numpy>=1.25 dtype classes
                return getattr(np.dtypes, name)
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {key} is not allowlisted")

    mod = types.ModuleType("coattn_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod


def weights_digest(module: nn.Module) -> str:
    """Short SHA-1 of every tensor in ``module.state_dict()``: the identity of randomly initialised weights."""
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_clap_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a LAION-CLAP checkpoint as a flat ``{key: tensor}`` dict, never unpickling code.

    Accepts the official ``{"state_dict": ..., "epoch": ..., ...}`` wrapper or a bare state dict and
    strips the ``module.`` prefix DataParallel/DDP training left on every key.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"CLAP checkpoint not found: {str(p)!r}. {HOW_TO_GET}")
    try:
        with warnings.catch_warnings():  # torch warns about protocol 4 just before failing on it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # released LAION-CLAP files use pickle protocol 4 and hold numpy scalars, both of which
        # torch's weights-only unpickler rejects; retry with an equally strict allowlist unpickler
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle())
            log.info("read %s with coattn's allowlist unpickler (pickle protocol 4 / numpy scalars)", p)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f" (it contains {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{str(p)!r} is not a plain weights file{what}: it pickles objects other than tensors, "
                "containers and numbers, and coattn refuses to unpickle arbitrary code. Re-save only its "
                f"state dict from a trusted Python session, or use an official checkpoint. {HOW_TO_GET}"
            ) from e
        except Exception as e:
            raise CheckpointError(f"cannot read CLAP checkpoint {str(p)!r}: {type(e).__name__}: {e}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(p)!r} holds no state dict of tensors (top level: {type(obj).__name__}). {HOW_TO_GET}")
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
