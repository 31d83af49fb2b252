"""Artefacts of the earlier layout (coattn 0.1) keep working: YAML files, command lines and
checkpoints written before the ``model:`` section had its ``loss`` / ``optim`` / ``evaluation``
groups and before the package had its ``train/`` and ``tools/`` rooms.

What is read as what (each use prints one deprecation line saying so):

    model.lr, encoder_lr, audio_encoder_lr, weight_decay, warmup_steps   -> model.optim.<same>
    model.aux_weight, pair_negatives                                     -> model.loss.<same>
    model.retrieval_mode -> model.evaluation.mode, eval_tile_pairs -> evaluation.tile_pairs,
    rerank_k, bootstrap, results_dir                                     -> model.evaluation.<same>
    class paths of moved classes (``CLASS_ALIASES``)                     -> their new place

Applied to YAML files and ``--key=value`` strings (the CLI's parser mode ``coattn``), to command
lines (``upgrade_argv``) and to a checkpoint's stored hyper-parameters (``upgrade_model_section``).
``coattn fit ... --print_config`` prints the upgraded configuration to save in its place.
"""
from __future__ import annotations

import sys
from typing import Any

GROUPS = {
    "optim": {k: k for k in ("lr", "encoder_lr", "audio_encoder_lr", "weight_decay", "warmup_steps")},
    "loss": {k: k for k in ("aux_weight", "pair_negatives")},
    "evaluation": {"retrieval_mode": "mode", "eval_tile_pairs": "tile_pairs", "rerank_k": "rerank_k",
                   "bootstrap": "bootstrap", "results_dir": "results_dir"},
}
OLD_KEYS = {old: (group, new) for group, keys in GROUPS.items() for old, new in keys.items()}
CLASS_ALIASES = {
    "coattn.module.CoAttnRetrieval": "coattn.train.module.CoAttnRetrieval",
    "coattn.safety.SafeCheckpointIO": "coattn.train.checkpoints.SafeCheckpointIO",
}
PARSER_MODE = "coattn"
_told: set[str] = set()


def _tell(source: str, what: list[str]) -> None:
    line = f"coattn: {source} uses the coattn 0.1 layout; read as {', '.join(what)} (save the upgraded " \
           "configuration with --print_config)"
    if line not in _told:
        _told.add(line)
        print(line, file=sys.stderr)


def upgrade_model_section(model: dict, source: str = "a config") -> dict:
    """The ``model`` section with flat 0.1 keys moved into their groups (a new dict; input unchanged)."""
    moved = [k for k in model if k in OLD_KEYS]
    if not moved:
        return model
    out = {k: v for k, v in model.items() if k not in OLD_KEYS}
    for k in moved:
        group, new = OLD_KEYS[k]
        target = out.get(group)
        out[group] = dict(target) if isinstance(target, dict) else {}
        out[group].setdefault(new, model[k])
    _tell(source, [f"model.{k} -> model.{OLD_KEYS[k][0]}.{OLD_KEYS[k][1]}" for k in moved])
    return out


def upgrade_class_paths(obj: Any, source: str = "a config") -> Any:
    """``class_path`` values of moved classes replaced by their new ones, anywhere in ``obj``."""
    if isinstance(obj, dict):
        out = {k: upgrade_class_paths(v, source) for k, v in obj.items()}
        cp = out.get("class_path")
        if isinstance(cp, str) and CLASS_ALIASES.get(cp, cp) != cp:
            out["class_path"] = CLASS_ALIASES[cp]
            _tell(source, [f"{cp} -> {CLASS_ALIASES[cp]}"])
        return out
    if isinstance(obj, list):
        return [upgrade_class_paths(v, source) for v in obj]
    return obj


def upgrade_config(cfg: Any, source: str = "a config") -> Any:
    """A whole loaded config (YAML document): class paths and the ``model`` section upgraded."""
    if not isinstance(cfg, dict):
        return cfg
    cfg = upgrade_class_paths(cfg, source)
    if isinstance(cfg.get("model"), dict):
        cfg = {**cfg, "model": upgrade_model_section(cfg["model"], source)}
    return cfg


def upgrade_argv(argv: list[str]) -> list[str]:
    """``--model.lr=X`` / ``--model.lr X`` -> ``--model.optim.lr=X`` (and the other moved keys)."""
    out = []
    for arg in argv:
        if arg.startswith("--model."):
            name, eq, value = arg[len("--model."):].partition("=")
            if name in OLD_KEYS:
                group, new = OLD_KEYS[name]
                _tell("the command line", [f"--model.{name} -> --model.{group}.{new}"])
                arg = f"--model.{group}.{new}{eq}{value}"
        out.append(arg)
    return out


def register_parser_mode() -> str:
    """Register (once) and return the jsonargparse parser mode ``coattn``: jsonargparse's own YAML
    loader, then ``upgrade_config``; the CLI parses with it."""
    from jsonargparse import get_loader, set_loader

    yaml_load = get_loader("yaml")
    if PARSER_MODE not in _registered:
        import yaml

        set_loader(PARSER_MODE, lambda value: upgrade_config(yaml_load(value), "a config file"),
                   exceptions=(yaml.YAMLError,))
        _registered.add(PARSER_MODE)
    return PARSER_MODE


_registered: set[str] = set()
