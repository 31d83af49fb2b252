"""What ``coattn fit / validate / test / predict`` check before anything runs, and how a class that
refuses its settings is reported: one line naming the config key, as jsonargparse's own errors do.

    coattn fit --config experiments/demo.yaml --model.cascade.init_args.depth=0
    coattn: error: model.cascade.init_args.depth: cascade depth must be >= 1, got 0

Called by ``CoAttnCLI`` (coattn/train/cli.py) after parsing, before the classes are built:

* ``nothing_to_train``: ``max_epochs: 0``, ``max_steps: 0`` or ``limit_train_batches: 0`` make a fit
  that exits 0 having trained nothing; refused (``coattn validate`` evaluates without training).
* ``needs_checkpoint``: validate / test / predict without ``--ckpt_path`` would score untrained
  weights (and the tiny text encoder has no tokenizer yet); refused unless ``--untrained true``.
* ``output_folders``: every folder the command writes (run folder, checkpoints, logs, results,
  ``model.feature_cache``),
  created and probed for writing now, not after an hour of training or scoring.
* ``audio_window``: the data module must cut the windows the audio tower takes: its ``sample_rate`` and
  ``clip_seconds`` are the tower's (CLAP: 48000 Hz, 10 s; aisfx: 44100 Hz, its ``clip_seconds``).
* ``earlier_results``: a ``coattn test`` whose results folder holds another checkpoint's results is
  refused (``--overwrite true`` replaces them); the same checkpoint tested again replaces its own.
* ``best_checkpoint``: ``--ckpt_path best`` in a new process, where Lightning knows no best model:
  the ``best_model_path`` that the newest ``last*.ckpt`` of the run recorded.

``name_the_key`` turns an exception raised while the classes are built (a ``ValueError`` in
``CoAttentionCascade.__init__``, a ``RuntimeError`` of an HF model that is not available offline...)
into a ``ConfigError`` whose message starts with the config key it came from. The key is found,
not listed: the innermost ``__init__`` / ``__post_init__`` frame of the traceback whose object is
one of the configured classes gives the section (``model.cascade``), and the section's arguments
named in the message (preferring those whose value the message quotes) give the key.
"""
from __future__ import annotations

import glob
import importlib
import inspect
import os
import re
import sys
import typing
from types import TracebackType
from typing import Any

from jsonargparse import Namespace

from coattn.errors import CheckpointError, ConfigError
from coattn.io import load_checkpoint
from coattn.train.checkpoints import checkpoint_dirs, find_last_checkpoint
from coattn.train.runs import check_writable

EVAL_STAGES = ("validate", "test", "predict")


def nothing_to_train(trainer_cfg) -> None:
    """``ConfigError`` for trainer settings under which a fit trains nothing."""
    if trainer_cfg is None:
        return
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        value = trainer_cfg.get(key)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ConfigError(f"trainer.{key}={value}: this fit would train nothing and exit as if it had "
                              "finished. Set it > 0 (max_steps: -1 = no limit), or use `coattn validate` to evaluate "
                              "without training")


def needs_checkpoint(sub: str, ckpt_path: Any, untrained: bool) -> None:
    """``ConfigError`` for an evaluation without weights (and for ``--untrained`` where it means nothing)."""
    if untrained and (sub not in EVAL_STAGES or ckpt_path):
        raise ConfigError(f"--untrained true is for validate / test / predict without --ckpt_path (got `coattn {sub}`"
                          f"{f' --ckpt_path {ckpt_path}' if ckpt_path else ''}); drop one of them")
    if sub in EVAL_STAGES and not ckpt_path and not untrained:
        raise ConfigError(f"`coattn {sub}` needs the weights to evaluate: pass --ckpt_path <file>, or --ckpt_path last "
                          "/ best (the run's newest last*.ckpt / the best one it recorded), or --untrained true to "
                          "evaluate the model exactly as the config builds it (e.g. pretrained CLAP zero-shot)")


def untrained_tokenizer(model) -> None:
    """``ConfigError`` when an untrained evaluation meets a text encoder whose tokenizer ``coattn fit`` trains."""
    enc = getattr(getattr(model, "model", None), "text_encoder", None)
    if enc is not None and getattr(enc, "needs_tokenizer_fit", False):
        raise ConfigError(f"--untrained true: {type(enc).__name__}'s tokenizer is trained by `coattn fit` and stored "
                          "in its checkpoints, so there is no untrained model to evaluate; pass --ckpt_path, or use a "
                          "pretrained text encoder (coattn.encoders.HFTextEncoder)")


def audio_window(model, datamodule) -> None:
    """``ConfigError`` when the data module's audio window is not the one the audio tower takes."""
    enc = getattr(getattr(model, "model", None), "audio_encoder", None)
    want = (getattr(enc, "sample_rate", None), getattr(enc, "clip_samples", None))
    have = (getattr(datamodule, "sample_rate", None), getattr(datamodule, "num_samples", None))
    if None in want or None in have or tuple(map(int, want)) == tuple(map(int, have)):
        return
    sr, n = map(int, want)
    raise ConfigError(f"data.init_args.sample_rate={have[0]}, clip_seconds={getattr(datamodule, 'clip_seconds', '?')} "
                      f"({have[1]} samples) but model.audio_encoder ({type(enc).__name__}) takes {sr} Hz windows of "
                      f"{n} samples: set data.init_args.sample_rate: {sr} and data.init_args.clip_seconds: {n / sr:g}")


def output_folders(sub: str, cfg) -> list[tuple[str, str]]:
    """(config key, folder) of every folder ``sub`` writes into."""
    trainer = cfg.get("trainer")
    root = str(trainer.get("default_root_dir") or os.getcwd()) if trainer is not None else os.getcwd()
    out = [("trainer.default_root_dir", root)]
    if sub == "fit" and trainer is not None and trainer.get("enable_checkpointing") is not False:
        out += [("trainer.callbacks (ModelCheckpoint dirpath)", d) for d in checkpoint_dirs(trainer)]
    loggers = trainer.get("logger") if trainer is not None else None
    for lg in loggers if isinstance(loggers, list) else ([loggers] if loggers not in (None, True, False) else []):
        args = lg.get("init_args") if hasattr(lg, "get") else None
        folder = (args.get("save_dir") or args.get("dir")) if args is not None else None
        if folder:
            out.append(("trainer.logger (save_dir)", str(folder)))
    model = cfg.get("model")
    cache = model.get("feature_cache") if model is not None else None
    if cache:  # the feature cache writes its shards at the first batch: probe it now
        out.append(("model.feature_cache", str(cache)))
    if sub in ("test", "predict"):
        evaluation = model.get("evaluation") if model is not None else None
        results = evaluation.get("results_dir") if evaluation is not None else None
        out.append(("model.evaluation.results_dir", str(results or os.path.join(root, "results", sub))))
    return out


def check_output_folders(sub: str, cfg) -> None:
    for key, folder in output_folders(sub, cfg):
        check_writable(folder, key)


def _same_path(a: Any, b: Any) -> bool:
    return (a is None) == (b is None) and (a is None or os.path.realpath(str(a)) == os.path.realpath(str(b)))


def earlier_results(sub: str, cfg, overwrite: bool, model_dir: str | None = None) -> None:
    """A ``coattn test`` never replaces another test's results without a word: ``ConfigError`` when its
    results folder holds a ``metrics.json`` of another checkpoint (path or content) or model folder,
    unless ``--overwrite true``. A test of the same checkpoint (``make demo`` run again) replaces its
    own results, and says so."""
    if overwrite and sub != "test":
        raise ConfigError(f"--overwrite true is for `coattn test` (replace the results of an earlier test), not "
                          f"`coattn {sub}`")
    if sub != "test":
        return
    import json

    from coattn.io import file_fingerprint

    folder = dict(output_folders(sub, cfg))["model.evaluation.results_dir"]
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "metrics.json"))
                   + glob.glob(os.path.join(glob.escape(folder), "*", "metrics.json")))
    if not found or overwrite:
        return
    ckpt = cfg.get("ckpt_path")
    fingerprint = file_fingerprint(ckpt) if ckpt and os.path.isfile(str(ckpt)) else None
    for path in found:
        try:
            extra = json.loads(open(path, encoding="utf-8").read()).get("extra") or {}
        except (OSError, ValueError, AttributeError):
            extra = {}
        same = (_same_path(extra.get("ckpt_path"), ckpt) and _same_path(extra.get("model_dir"), model_dir)
                and extra.get("ckpt_fingerprint") in (None, fingerprint))
        if not same or not extra:
            what = (f"checkpoint {extra['ckpt_path']}" if extra.get("ckpt_path") else
                    f"model folder {extra['model_dir']}" if extra.get("model_dir") else "an untrained model")
            if extra.get("ckpt_path") and _same_path(extra.get("ckpt_path"), ckpt):
                what += " (another version of the file: it changed since)"
            raise ConfigError(f"{folder} holds the results of an earlier test ({os.path.relpath(path, folder)}, "
                              f"{what}): pass --overwrite true to replace them, or set model.evaluation.results_dir "
                              "(or COATTN_RUN_DIR) to keep both")
    print(f"coattn: replacing the results of an earlier test of the same checkpoint in {folder}", file=sys.stderr)


def best_checkpoint(trainer_cfg) -> str:
    """The best checkpoint the run recorded: ``best_model_path`` of the ModelCheckpoint state in its
    newest ``last*.ckpt``, looked up by name in that checkpoint's folder first (the run may have moved)."""
    dirs = checkpoint_dirs(trainer_cfg)
    last = find_last_checkpoint(dirs)
    if last is None:
        raise CheckpointError(f"--ckpt_path best: no last*.ckpt in {', '.join(dirs) or '(no ModelCheckpoint dirpath)'} "
                              "to read the best checkpoint from; pass the checkpoint file")
    states = (load_checkpoint(last, mmap=True).get("callbacks") or {}).values()
    recorded = [s["best_model_path"] for s in states if isinstance(s, dict) and s.get("best_model_path")]
    for path in recorded:
        # the run's own folder first: a copied run must not use the original's files
        for candidate in (os.path.join(os.path.dirname(last), os.path.basename(path)), path):
            if os.path.isfile(candidate):
                return candidate
    raise CheckpointError(f"--ckpt_path best: {last} records {recorded or 'no best checkpoint'}, "
                          f"{'which is not there' if recorded else 'it was never saved'}; pass the checkpoint file")


# ---------------------------------------------------------------------------------------------- naming the key
def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _top(value: Any) -> dict:
    """The first-level keys of a jsonargparse Namespace or a dict (``Namespace.items`` flattens)."""
    return dict(vars(value)) if isinstance(value, Namespace) else dict(value) if isinstance(value, dict) else {}


def _sections(cfg, model_class: type) -> list[tuple[str, type, dict]]:
    """(config key, class, its arguments as configured) of every class the config builds."""
    out: list[tuple[str, type, dict]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
            return
        top = _top(value)
        if top.get("class_path"):
            cls = _import(str(top["class_path"]))
            if cls is not None:
                out.append((f"{key}.init_args", cls, _top(top.get("init_args"))))
        for k, v in top.items():
            if k != "class_path":
                walk(v, f"{key}.{k}" if key else k)

    walk(cfg, "")
    model = _top(cfg.get("model"))
    out.append(("model", model_class, model))
    hints = typing.get_type_hints(model_class.__init__)
    for name in inspect.signature(model_class).parameters:  # the dataclass groups: model.loss, optim, evaluation
        if inspect.isclass(hints.get(name)) and _top(model.get(name)):
            out.append((f"model.{name}", hints[name], _top(model[name])))
    from lightning.pytorch import Trainer

    out.append(("trainer", Trainer, _top(cfg.get("trainer"))))
    return out


def _frames(tb: TracebackType | None) -> list[Any]:
    """The objects whose ``__init__`` / ``__post_init__`` is on the traceback, outermost first."""
    objs = []
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in ("__init__", "__post_init__") and "self" in frame.f_locals:
            objs.append(frame.f_locals["self"])
        tb = tb.tb_next
    return objs


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (jsonargparse re-raises a class's
    error as a union mismatch; an encoder wraps the hub's OSError in its own message)."""
    out = [exc]
    while (nxt := out[-1].__cause__ or out[-1].__context__) is not None and all(nxt is not e for e in out):
        out.append(nxt)
    return out


def name_the_key(exc: BaseException, cfg, model_class: type) -> ConfigError | None:
    """A ``ConfigError`` starting with the config key ``exc`` came from, or None if no configured class raised it."""
    sections = _sections(cfg, model_class)
    found = [(origin, key, args) for origin in _chain(exc) for obj in reversed(_frames(origin.__traceback__))
             for key, cls, args in sections if type(obj) is cls]  # innermost configured class first
    if not found:
        return None
    origin, key, args = found[0]
    message = str(origin).strip() or type(origin).__name__
    section = key.rsplit(".init_args", 1)[0]
    if section in message:  # the message names its key already
        return ConfigError(message)
    named = [a for a in args if re.search(rf"(?<![\w.]){re.escape(a)}(?!\w)", message)]
    quoted = [a for a in named if str(args[a]) in message]  # of several names, those whose value it quotes
    keys = [f"{key}.{a}" for a in (quoted or named)] or [section]
    return ConfigError(f"{', '.join(keys)}: {message}")
