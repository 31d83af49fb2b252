"""Exported model folders: what ``CoAttnModel.save_pretrained`` and ``coattn export`` write and
``CoAttnModel.from_pretrained`` reads, on huggingface_hub's ``PyTorchModelHubMixin``.

    coattn export --ckpt_path runs/demo/checkpoints/best.ckpt exported/demo
    model = CoAttnModel.from_pretrained("exported/demo")      # a folder, or a Hub id such as "user/coattn-demo"
    model.push_to_hub("user/coattn-demo")                     # the mixin's upload: needs a token and the network

A folder has the Hub's layout for mixin models, so a Hub id downloads it as it is:

    model.safetensors   every weight of the model (encoders, cascade, heads, temperatures)
    config.json         the architecture: CoAttnModel's arguments, each encoder and the cascade as
                        {"class_path", "init_args"}; no training setting and no machine path
    tokenizer.json      the per-run BPE tokenizer of a TinyTextEncoder (absent otherwise)
    text_encoder/       an HFTextEncoder's tokenizer files and Hugging Face config.json (no weights)
    README.md           the model card (coattn/model_card.py)

Why "architecture only": the folder must load on any machine. Init arguments that name weight
files (``ClapAudioEncoder.checkpoint``, ``HFTextEncoder.clap_checkpoint``, ``CoAttnModel.clap_checkpoint``)
become null, because model.safetensors holds those weights; ``HFTextEncoder.model`` becomes the
folder's ``text_encoder/`` with ``pretrained: false`` (the network is built from the saved config,
its weights come from the safetensors); ``freeze`` and the cascade's ``checkpointing``, choices of how
a run trained, are dropped. The configuration of each component is the one it was built from
(``coattn.model.build_component`` records it), so a model loaded with ``from_checkpoint`` or
``from_pretrained`` can be saved; one assembled from modules built in Python cannot (its modules do not
know their arguments).
Loading is strict: a weight missing from the file or left over is an error, where the mixin's own
default (``strict=False``) would hide it.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coattn.encoders import AudioTower, HFTextEncoder
from coattn.errors import CheckpointError, ConfigError
from coattn.io import atomic_write_bytes, atomic_write_text
from coattn.model_card import MODEL_CARD, describe

log = logging.getLogger(__name__)

REQUIRED_COMPONENTS = ("audio_encoder", "text_encoder")  # config.json entries every model folder has
FORMAT = "coattn-model/1"  # config.json's "format": what this module writes and reads
WEIGHTS_FILE = "model.safetensors"  # huggingface_hub.constants.SAFETENSORS_SINGLE_FILE
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TEXT_FOLDER = "text_encoder"
COMPONENTS = ("audio_encoder", "text_encoder", "cascade")
WEIGHT_PATHS = {HFTextEncoder: ("clap_checkpoint",)}  # -> null (audio towers: AudioTower.export_args)
TRAINING_ONLY = ("freeze", "checkpointing")  # dropped: how a run trained, not what the model is
HUB_METADATA = {  # PyTorchModelHubMixin class arguments: the card's template and front matter
    "model_card_template": MODEL_CARD,
    "library_name": "coattn",
    "tags": ["audio-retrieval", "text-to-audio-retrieval", "co-attention", "clap"],
    "paper_url": "https://arxiv.org/abs/2412.20914",
}


def record_spec(module: Any, spec: dict) -> Any:
    """Remember the ``{"class_path", "init_args"}`` a component was built from (for ``architecture``)."""
    if isinstance(module, nn.Module):
        module._coattn_spec = spec
    return module


def component_config(module: nn.Module, name: str) -> dict:
    """The exported ``{"class_path", "init_args"}`` of one component (module docstring: what changes)."""
    spec = getattr(module, "_coattn_spec", None)
    if spec is None:
        raise ConfigError(
            f"model.{name} ({type(module).__name__}) was built in Python, so its arguments are unknown and the "
            "model cannot be saved as a folder: load the model with CoAttnModel.from_checkpoint / from_pretrained "
            "(or `coattn export --ckpt_path CKPT OUT_DIR`), or build each component with "
            "coattn.model.build_component({'class_path': ..., 'init_args': {...}}, torch.nn.Module)")
    args = {k: v for k, v in (spec.get("init_args") or {}).items() if k not in TRAINING_ONLY}
    for cls, keys in WEIGHT_PATHS.items():
        if isinstance(module, cls):
            args.update({k: None for k in keys if k in args})
    if isinstance(module, AudioTower):  # e.g. checkpoint: null (and pretrained: false): weights from safetensors
        args.update(module.export_args())
    if isinstance(module, HFTextEncoder):
        args.update(model=TEXT_FOLDER, pretrained=False, pooling=module.pooling)  # "auto" read the source folder
    return {"class_path": spec["class_path"], "init_args": args}


def architecture(model: nn.Module) -> dict:
    """``config.json`` of a CoAttnModel: its arguments (components via ``component_config``)."""
    from coattn import __version__

    names = [p for p in inspect.signature(type(model)).parameters if p not in COMPONENTS]
    captured = getattr(model, "_hub_mixin_config", None) or {}  # the mixin records the jsonable arguments
    config: dict[str, Any] = {n: captured[n] for n in names if n in captured}
    config["clap_checkpoint"] = None  # the CLAP projections are in model.safetensors
    config.update({n: component_config(getattr(model, n), n) for n in COMPONENTS})
    enc = model.audio_encoder
    config["audio_input"] = {"sample_rate": int(enc.sample_rate), "clip_samples": int(enc.clip_samples)}
    config["text_tokenizer"] = TOKENIZER_FILE if model.text_encoder.tokenizer_state() is not None else None
    config.update(format=FORMAT, coattn_version=__version__)
    return config


def card_fields(model: nn.Module) -> dict:
    """The model card's architecture fields (``CoAttnModel.generate_model_card`` adds them to every card)."""
    return describe(architecture(model))


def save_folder(model: nn.Module, directory: str | os.PathLike) -> dict:
    """Write weights, ``config.json`` and the tokenizer of ``model`` into ``directory``; return the config.

    Called by ``CoAttnModel._save_pretrained`` (the mixin's hook), so the mixin keeps this
    ``config.json`` and adds the model card.
    """
    from safetensors.torch import save

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = architecture(model)  # first: a model that cannot be described writes nothing
    state = model.state_dict()
    storages: dict[int, str] = {}
    for key, tensor in state.items():  # safetensors refuses shared memory; CoAttnModel has none, say so if it ever does
        first = storages.setdefault(tensor.untyped_storage().data_ptr(), key)
        if first != key and tensor.numel():
            raise ConfigError(f"weights {first!r} and {key!r} share memory; safetensors cannot store tied weights")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors, metadata={"format": "pt", "coattn_format": FORMAT}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    text = model.text_encoder
    (folder / TOKENIZER_FILE).unlink(missing_ok=True)  # no stale file of another model survives a re-export
    if config["text_tokenizer"]:
        atomic_write_text(folder / TOKENIZER_FILE, text.tokenizer_state())
    if isinstance(text, HFTextEncoder):  # transformers writes these files itself (not atomically)
        text.tokenizer.save_pretrained(folder / TEXT_FOLDER)
        text.model.config.save_pretrained(folder / TEXT_FOLDER)
    log.info("saved %d tensors and %s to %s", len(tensors), CONFIG_FILE, folder)
    return config


def local_folder(model_id: str | os.PathLike, **download: Any) -> Path:
    """The folder of ``model_id``: a local folder as it is, a Hub id through ``snapshot_download``
    (every file, ``text_encoder/`` included; ``download``: revision, cache_dir, token, ...)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(model_id), **{k: v for k, v in download.items() if v is not None}))
    except Exception as exc:  # offline, unknown repo, not a valid id (a mistyped folder): one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"{str(model_id)!r} is no local folder, and fetching it from the Hugging Face Hub failed "
                          f"({type(exc).__name__}: {first})") from None


def read_config(folder: str | os.PathLike, config: dict | None = None) -> dict:
    """The architecture of an exported folder (``config``: already read by the mixin), with the
    ``text_encoder/`` folder made absolute; refuses folders that are not coattn models."""
    folder = Path(folder)
    if config is None:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{str(folder)!r} has no {CONFIG_FILE}: not a model folder of `coattn export` / "
                              "CoAttnModel.save_pretrained (a Lightning checkpoint goes to --ckpt_path)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{str(folder)!r}: {CONFIG_FILE} has format {found!r}, not {FORMAT!r}: "
                          "not a coattn model folder, or one of a newer coattn")
    config = json.loads(json.dumps(config))  # a deep copy the caller may change
    for key in REQUIRED_COMPONENTS:
        spec = config.get(key)
        if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
            raise ConfigError(f"{folder / CONFIG_FILE}: {key!r} is {'missing' if spec is None else repr(spec)[:80]}, "
                              "not {\"class_path\": ..., \"init_args\": {...}}: the file is damaged or was edited; "
                              "export the checkpoint again (coattn export)")
    args = config["text_encoder"].get("init_args") or {}
    if args.get("model") == TEXT_FOLDER and args.get("pretrained") is False:
        args["model"] = str((folder / TEXT_FOLDER).resolve())
    return config


def load_weights(model: nn.Module, folder: str | os.PathLike, config: dict,
                 map_location: str | torch.device = "cpu") -> nn.Module:
    """Put the folder's tokenizer and ``model.safetensors`` into a model built from its ``config``
    (strictly: every weight, no more, no less)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if config.get("text_tokenizer"):
        tok = folder / config["text_tokenizer"]
        try:
            model.text_encoder.load_tokenizer_state(tok.read_text(encoding="utf-8"))
        except Exception as exc:  # missing, not UTF-8, not a tokenizers JSON (the Rust parser raises Exception)
            first = (str(exc).splitlines() or [""])[0][:200]
            raise CheckpointError(f"cannot read the tokenizer {tok}: {type(exc).__name__}: {first}; "
                                  "export the checkpoint again (coattn export)") from None
    path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(path), device=str(torch.device(map_location)))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # missing, truncated, not safetensors
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        raise CheckpointError(f"{path}: weights do not fit {folder / CONFIG_FILE}: {str(exc)[:500]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit {folder / CONFIG_FILE} (missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]})")
    return model
