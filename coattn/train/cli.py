"""``coattn fit / validate / test / predict``: the one LightningCLI subclass of coattn.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt

What it adds to LightningCLI, in the order it happens:

1. **Parse** (``parse_arguments``): configs and command lines of the 0.1 layout are upgraded
   (coattn/train/legacy.py); the run folder moves where ``COATTN_RUN_DIR`` or a W&B sweep agent asks
   (coattn/train/runs.py); then ``--ckpt_path`` is checked and resolved *after* that move
   (``last`` = the newest ``last*.ckpt`` of the run's ModelCheckpoint folder). A missing, truncated,
   unsafe or foreign file is a one-line error before anything is built. ``best`` in a new process is
   the best checkpoint the run recorded; ``last`` / ``best`` that find nothing are errors for
   validate / test / predict (a fit with ``last`` and nothing to resume starts from scratch).
   ``--model DIR`` (validate, test, predict), where DIR is a folder of ``coattn export`` /
   ``save_pretrained``, is the other source of a model: the folder's architecture is put in the
   config (at the place of ``--model``, so no ``--config`` is needed for it) and, after the classes
   are built, its weights and tokenizer are loaded (coattn/hub.py). ``--model FILE.yaml`` keeps
   LightningCLI's meaning (a config of the model group): only a folder is an exported model.
2. **Start-up checks** (``before_instantiate_classes``, coattn/train/startup.py): a fit that would
   train nothing, an evaluation without ``--ckpt_path`` or ``--model DIR`` (unless ``--untrained
   true``), an output folder that cannot be written: one line each. A fit takes the run folder's
   lock (one fit per folder, the holder named) and refuses a fresh start over another run's
   checkpoints. An error raised while a configured class is built is one line naming its key. Once
   built, the data module must cut the audio tower's window (``startup.audio_window``).
3. **Who wins with a checkpoint** (or an exported folder): it restores the *architecture* (the
   ``model`` keys that are ``CoAttnModel``'s arguments: encoders, cascade, heads), so it always
   matches the weights;
   every override is printed. Everything else (``model.evaluation``, ``loss``, ``optim``,
   ``feature_cache``, ``data``, ``trainer``) is the command's: a structural rule, not a key list.
   A checkpoint whose weights do not fit the model the config builds is an error listing them.
4. **W&B**: a checkpoint's ``wandb_run_id`` is continued; live loggers get absolute folders.
5. **Trainer** (``instantiate_trainer``): checkpoints through ``SafeCheckpointIO`` (atomic, finite,
   weights-only), and default callbacks unless the config has one of the same class:
   ``NonFiniteGuard`` (stop on NaN/Inf, naming the loss term), ``RngState`` (RNG states in
   checkpoints), ``ResumeCheck`` (says what a resume with other epoch settings changes, and when a
   fit trained nothing), ``StopOnSigterm`` (SIGTERM: save ``last.ckpt`` mid-epoch, exit 143),
   ``KeepLastCheckpoint`` (keeps ``last.ckpt`` current: Lightning 2.6.6 refreshes it only when the
   monitored metric made the top k).

``parse_only(args)`` parses without instantiating anything (``coattn sweep`` checks every grid point
with it). Only public LightningCLI hooks are used, but one: see ``_parse_ckpt_path``.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from coattn import hub
from coattn.errors import CheckpointError, ConfigError, UserFacingError
from coattn.io import load_checkpoint
from coattn.model import CoAttnModel
from coattn.train import legacy, quiet, runs, startup, threads
from coattn.train.checkpoints import SafeCheckpointIO, checkpoint_dirs, find_last_checkpoint

ARCHITECTURE = frozenset(p for p in inspect.signature(CoAttnModel).parameters)  # what a checkpoint restores
SPECIAL_CKPT = ("best", "hpc")
EXIT_SIGTERM = 128 + 15  # what a shell reports for a process ended by SIGTERM: `fit && test` stops there


class _ParsedOnly(Exception):
    """Raised by ``before_instantiate_classes`` in parse-only mode to stop after parsing."""

    def __init__(self, cli: "CoAttnCLI"):
        super().__init__("parsed only")
        self.cli = cli


def _ns_to_dict(v: Any) -> Any:
    if hasattr(v, "as_dict"):
        return v.as_dict()
    if isinstance(v, dict):
        return {k: _ns_to_dict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_ns_to_dict(x) for x in v]
    return v


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _has_type(items: Any, cls: type) -> bool:
    items = items if isinstance(items, list) else ([items] if items is not None else [])
    return any(isinstance(x, cls) for x in items)


class CoAttnCLI(LightningCLI):
    """LightningCLI for ``CoAttnRetrieval`` and any ``AudioCaptionDataModule`` (module docstring)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, parse_only: bool = False):
        from callbacks.wandb_config import WandbSaveConfigCallback
        from coattn.train.module import CoAttnRetrieval
        from data_modules.base import AudioCaptionDataModule

        self._parse_only = parse_only
        self._ckpt_file: str | None = None
        self._ckpt_shapes: dict[str, tuple] | None = None
        self._exported: tuple[Path, dict] | None = None  # (folder, config) of --model DIR
        quiet.install()  # the Lightning notes coattn causes on purpose (coattn/train/quiet.py)
        super().__init__(CoAttnRetrieval, AudioCaptionDataModule, subclass_mode_data=True,
                         save_config_callback=WandbSaveConfigCallback, save_config_kwargs={"overwrite": True},
                         args=args, run=run, parser_kwargs={"parser_mode": legacy.register_parser_mode()})

    def _section(self):
        sub = self.config.get("subcommand")
        return sub, (self.config[sub] if sub else self.config)

    # ---- 1. parse -----------------------------------------------------------------------------
    @override
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--untrained", type=bool, default=False,
                            help="validate/test/predict without --ckpt_path: evaluate the model exactly as the "
                                 "config builds it (pretrained encoders, untrained heads: e.g. CLAP zero-shot)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="test: replace the results an earlier test of another checkpoint left in the "
                                 "results folder (without it, such a test is refused)")

    @override
    def parse_arguments(self, parser, args) -> None:
        if args is None:  # only pass argv explicitly when it changes (Lightning warns about explicit args)
            upgraded = legacy.upgrade_argv(sys.argv[1:])
            args = None if upgraded == sys.argv[1:] else upgraded
        elif isinstance(args, list):
            args = legacy.upgrade_argv(args)
        swapped = self._exported_model(sys.argv[1:] if args is None else args)
        if swapped is not None:
            args = swapped
        super().parse_arguments(parser, args)
        sub, cfg = self._section()
        trainer = cfg.get("trainer")
        run_dir = runs.run_dir_from_env(trainer.get("default_root_dir") if trainer is not None else None)
        if run_dir:
            old = runs.relocate_outputs(cfg, run_dir)
            print(f"coattn: outputs of this run go to {run_dir} (instead of {old})", file=sys.stderr)
            runs.name_wandb_runs(cfg)
        if self._exported is not None:
            if cfg.get("ckpt_path"):
                raise ConfigError("give either --ckpt_path (a checkpoint) or --model DIR (an exported folder), "
                                  "not both")
            folder, config = self._exported
            self._overlay_architecture(sub, config, f"the exported model {folder}")
        elif sub in ("fit", "validate", "test", "predict") and cfg.get("ckpt_path"):
            self._resolve_checkpoint(sub, cfg)

    def _exported_model(self, argv: Any) -> list[str] | None:
        """``argv`` with ``--model DIR`` (an exported folder) replaced by its architecture as the model
        group's config (JSON), remembering the folder; None when there is no such option."""
        if not isinstance(argv, list):
            return None
        out, found = list(argv), None
        for i, a in enumerate(argv):
            if a == "--model" and i + 1 < len(argv):
                at, value, prefix = i + 1, argv[i + 1], ""
            elif a.startswith("--model="):
                at, value, prefix = i, a.split("=", 1)[1], "--model="
            else:
                continue
            if Path(value).expanduser().is_dir():  # a folder is never a config of the model group
                found = Path(value).expanduser()
                config = hub.read_config(found)
                out[at] = prefix + json.dumps({k: v for k, v in config.items() if k in ARCHITECTURE})
                self._exported = (found, config)
        if found is None:
            return None
        sub = next((a for a in argv if not a.startswith("-")), None)
        if sub not in ("validate", "test", "predict"):
            raise ConfigError(f"--model {found}: an exported model folder serves `coattn validate / test / predict` "
                              f"(not {sub!r}); to train, use the config of the run (`--config`) or `--ckpt_path`")
        return out

    def _resolve_checkpoint(self, sub: str, cfg) -> None:
        ckpt = str(cfg.get("ckpt_path"))
        if ckpt == "last":
            dirs = checkpoint_dirs(cfg.get("trainer"))
            found = find_last_checkpoint(dirs)
            if found is None:
                if dirs and sub != "fit":
                    raise CheckpointError(f"--ckpt_path last: no last*.ckpt in {', '.join(dirs)}: nothing to "
                                          f"{sub}; train first (`coattn fit`), or pass the checkpoint file")
                if dirs:  # Lightning's behaviour ("set and forget"): start from scratch, loudly
                    print(f"coattn: --ckpt_path last: no last*.ckpt in {', '.join(dirs)}; starting from scratch",
                          file=sys.stderr)
                    cfg["ckpt_path"] = None
                return  # no dirpath configured: Lightning resolves 'last' itself
            print(f"coattn: --ckpt_path last -> {found}", file=sys.stderr)
            cfg["ckpt_path"] = ckpt = found
        elif ckpt == "best" and sub != "fit":  # a new process: Lightning knows no best model, the run does
            cfg["ckpt_path"] = ckpt = startup.best_checkpoint(cfg.get("trainer"))
            print(f"coattn: --ckpt_path best -> {ckpt}", file=sys.stderr)
        elif ckpt in SPECIAL_CKPT or "://" in ckpt:
            return  # Lightning resolves these itself
        checkpoint = load_checkpoint(ckpt, mmap=True)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            top = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise CheckpointError(f"{ckpt!r} is not a Lightning checkpoint of coattn (no 'state_dict'; top-level "
                                  f"keys: {top})")
        self._ckpt_file = ckpt
        self._ckpt_shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if not hparams:
            print(f"coattn: {ckpt} stores no hyper-parameters: the model is built from the config", file=sys.stderr)
            return
        hparams = legacy.upgrade_class_paths(legacy.upgrade_model_section(hparams, ckpt), ckpt)
        self._overlay_architecture(sub, hparams, f"the checkpoint {ckpt}")

    def _overlay_architecture(self, sub: str, stored: dict, source: str) -> None:
        """Put the ``CoAttnModel`` arguments of ``stored`` over the command's ``model`` section, printing
        every value that changes (rule 2 of the module docstring)."""
        architecture = {k: v for k, v in stored.items() if k in ARCHITECTURE}
        before = _flatten(_ns_to_dict(self.config[sub].get("model")) or {})
        try:
            self.config = self.parser.parse_object({sub: {"model": architecture}}, self.config)
        except SystemExit:
            sys.stderr.write(f"coattn: the model configuration stored in {source} does not parse with this version "
                             "of coattn (a renamed or removed model option?)\n")
            raise
        after = _flatten(_ns_to_dict(self.config[sub].get("model")) or {})
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        if changed:
            lines = [f"  model.{k}: {after.get(k)!r} (config: {before.get(k)!r})" for k in changed]
            print(f"coattn: the model architecture comes from {source}; it overrides:\n"
                  + "\n".join(lines), file=sys.stderr)

    # The one private LightningCLI method coattn overrides. LightningCLI.__init__ (2.6) calls it right
    # after parse_arguments to overlay *every* hyper-parameter of a --ckpt_path checkpoint on the
    # config, evaluation settings included; coattn does the overlay itself in parse_arguments, for the
    # architecture only, so this is switched off. tests/test_cli.py checks that Lightning still calls
    # it between parse_arguments and before_instantiate_classes, and fails loudly if that changes.
    def _parse_ckpt_path(self) -> None:
        return None

    # ---- 2-3. before / after the classes are built ---------------------------------------------
    @override
    def before_instantiate_classes(self) -> None:
        if self._parse_only:
            raise _ParsedOnly(self)
        sub, cfg = self._section()
        threads.apply_cpu_thread_policy((cfg.get("trainer") or {}).get("accelerator"))  # coattn/train/threads.py
        if sub == "fit":
            startup.nothing_to_train(cfg.get("trainer"))
        startup.needs_checkpoint(sub, cfg.get("ckpt_path"), bool(cfg.get("untrained")) or self._exported is not None)
        if sub in ("fit", *startup.EVAL_STAGES):
            startup.check_output_folders(sub, cfg)
        startup.earlier_results(sub, cfg, bool(cfg.get("overwrite")),
                                str(self._exported[0]) if self._exported is not None else None)
        if sub == "fit" and rank_zero_only.rank == 0:  # DDP ranks > 0 re-run this command: rank 0 owns the folder
            self._claim_run_folder(cfg)
        ckpt = cfg.get("ckpt_path") if sub in ("fit", "validate", "test") else None
        if ckpt and os.path.isfile(str(ckpt)) and runs.wandb_logger_specs(cfg):
            run_id = runs.read_wandb_run_id(ckpt)
            if run_id and runs.set_wandb_resume(cfg, run_id):
                print(f"W&B: continuing run {run_id} (from {ckpt})", file=sys.stderr)

    def before_fit(self) -> None:  # LightningCLI calls it before trainer.fit
        quiet.eval_modules_on_purpose(self.model)  # encoders hold some modules in eval on purpose

    def _claim_run_folder(self, cfg) -> None:
        """One fit per run folder (a lock), and a fresh start never overwrites another run's checkpoints."""
        trainer = cfg.get("trainer")
        if trainer is None or trainer.get("fast_dev_run"):  # fast_dev_run writes no checkpoint
            return
        root = str(trainer.get("default_root_dir") or os.getcwd())
        dirs = checkpoint_dirs(trainer) if trainer.get("enable_checkpointing") is not False else []
        real = os.path.realpath(root)
        outside = [d for d in map(os.path.realpath, dirs) if not d.startswith(real + os.sep)]
        for folder in dict.fromkeys([real, *outside]):  # the run folder, and checkpoint folders outside it
            runs.lock_run_folder(folder)
        ckpt = cfg.get("ckpt_path")
        hpc = [f for f in os.listdir(root) if f.startswith("hpc_ckpt_")] if os.path.isdir(root) else []
        if ckpt is None and hpc:  # Lightning's SLURM convention: a requeued job resumes from hpc_ckpt_<n>.ckpt
            print(f"coattn: {root} holds {max(hpc)}: Lightning resumes from it (SLURM requeue)", file=sys.stderr)
            return
        runs.refuse_overwrite(dirs, None if ckpt is None else str(ckpt))

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, RuntimeError, OSError, UserFacingError, MisconfigurationException) as exc:
            from coattn.train.module import CoAttnRetrieval

            named = startup.name_the_key(exc, self._section()[1], CoAttnRetrieval)
            if named is None:
                raise
            raise named from exc

    @override
    def after_instantiate_classes(self) -> None:
        runs.absolute_wandb_dirs(getattr(getattr(self, "trainer", None), "loggers", []))
        if self._exported is not None and getattr(self, "model", None) is not None:
            folder, config = self._exported
            hub.load_weights(self.model.model, folder, config)  # strict: a mismatch is a one-line error
            self.model.exported_from = str(folder)  # recorded in metrics.json
        sub, cfg = self._section()
        if sub in startup.EVAL_STAGES and not cfg.get("ckpt_path") and self._exported is None:
            startup.untrained_tokenizer(self.model)
        if getattr(self, "model", None) is not None:
            startup.audio_window(self.model, getattr(self, "datamodule", None))
        if self._ckpt_shapes is None or getattr(self, "model", None) is None:
            return
        own = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        missing = sorted(set(own) - set(self._ckpt_shapes))
        unexpected = sorted(set(self._ckpt_shapes) - set(own))
        shapes = [f"{k}: checkpoint {self._ckpt_shapes[k]} vs model {own[k]}"
                  for k in sorted(set(own) & set(self._ckpt_shapes)) if own[k] != self._ckpt_shapes[k]]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model weights missing from it (e.g. {missing[:3]})")
            if unexpected:
                parts.append(f"{len(unexpected)} weights the model does not have (e.g. {unexpected[:3]})")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
            raise CheckpointError(
                f"checkpoint {self._ckpt_file!r} does not fit the model this config builds (another architecture, "
                f"cascade or encoder size?): {'; '.join(parts)}. Use the config the checkpoint was trained with.")

    # ---- 4. the trainer --------------------------------------------------------------------------
    @override
    def instantiate_trainer(self, **kwargs: Any):
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

        from callbacks.atomic_checkpoint import KeepLastCheckpoint
        from callbacks.numerics import NonFiniteGuard
        from callbacks.resume_state import ResumeCheck, RngState
        from callbacks.signals import StopOnSigterm

        sub = self.subcommand
        trainer_cfg = (self.config_init[sub] if sub else self.config_init).get("trainer", {})
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_progress_bar") is False:
            # `--trainer.enable_progress_bar=false` on a YAML that configures a bar: drop the bar
            # instead of Lightning's MisconfigurationException.
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        callbacks += [cls() for cls in (NonFiniteGuard, RngState, ResumeCheck, StopOnSigterm)
                      if not _has_type(callbacks, cls)]
        if (trainer_cfg.get("enable_checkpointing") is not False and not _has_type(callbacks, KeepLastCheckpoint)
                and any(isinstance(c, ModelCheckpoint) and c.save_last for c in callbacks)):
            callbacks.append(KeepLastCheckpoint())
        plugins = trainer_cfg.get("plugins")
        plugins = plugins if isinstance(plugins, list) else ([plugins] if plugins is not None else [])
        if not _has_type(plugins, CheckpointIO):
            plugins = [*plugins, SafeCheckpointIO()]
        return super().instantiate_trainer(**{"callbacks": callbacks, "plugins": plugins, **kwargs})


def build_cli(args: list[str] | None, run: bool = True) -> CoAttnCLI:
    """The CLI on ``args`` (None: ``sys.argv``; DDP relaunches re-read it)."""
    return CoAttnCLI(args, run=run)


def run(args: list[str] | None = None) -> int:
    """``coattn fit|validate|test|predict ...`` as an exit code: 0 when it ran; an error meant for people
    (``UserFacingError``, or Lightning's ``MisconfigurationException``) prints one line ``coattn: error: ...``
    and gives 1 (``COATTN_DEBUG=1``: raise it); stopped by SIGTERM: 143 (``callbacks.signals`` said so)."""
    try:
        build_cli(args)
    except (UserFacingError, MisconfigurationException) as exc:  # bad setting, NaN loss...: the message says it all
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1
    except SIGTERMException:  # Lightning's SystemExit() would give 0: `fit && test` must not go on
        return EXIT_SIGTERM
    finally:
        runs.release_run_folders()  # in-process runs (sweeps, tests) free the folder for the next one
    return 0


def parse_only(args: list[str]) -> CoAttnCLI:
    """Parse ``args`` as ``coattn`` would, without building or running anything: the returned CLI's
    ``config`` is the resolved configuration and its ``parser`` parses more argv cheaply."""
    try:
        with warnings.catch_warnings():  # tools (probe, sweep) build this argv on purpose: not a mistake to warn of
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            CoAttnCLI(args, parse_only=True)
    except _ParsedOnly as stop:
        return stop.cli
    raise RuntimeError("parse_only: the CLI did not stop after parsing")  # not reached
