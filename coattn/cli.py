"""The ``coattn`` command: LightningCLI subcommands and the tools, dispatched from one entry point.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
    coattn fit  --config experiments/demo.yaml --print_config      # the full resolved config
    coattn synth data/demo --seed 0                                 # built-in demo dataset

Tools (synth, sounds, augment, data-check, prepare, search, probe, compare, export, serve, sweep,
synth-moments, localize) are plain
``main(argv) -> int`` functions under coattn/tools/, imported lazily, so ``coattn synth`` does not pay
for importing Lightning. Errors meant for people (``coattn.errors.UserFacingError``) print one line
``coattn: error: ...`` and exit 1; ``COATTN_DEBUG=1`` shows the traceback as well.
"""
from __future__ import annotations

import importlib
import os
import sys

# name -> "module:function"; each takes the remaining argv and returns an exit code.
TOOLS = {
    "synth": "coattn.tools.synth:main",
    "sounds": "coattn.tools.sounds:main",
    "augment": "coattn.tools.augment:main",
    "data-check": "coattn.tools.data_check:main",
    "prepare": "coattn.tools.prepare:main",
    "search": "coattn.tools.search:main",
    "probe": "coattn.tools.probe:main",
    "compare": "coattn.tools.compare:main",
    "export": "coattn.tools.export:main",
    "serve": "coattn.tools.serve:main",
    "sweep": "coattn.tools.sweep:main",
    "synth-moments": "coattn.tools.synth_moments:main",
    "localize": "coattn.tools.localize:main",
}

# The first screen a new user sees (`coattn`, `coattn --help`): one line per command.
TRAINING = {
    "fit": "train a model: coattn fit --config experiments/demo.yaml",
    "validate": "score a checkpoint on the validation split (--ckpt_path FILE|last|best)",
    "test": "score a checkpoint on the test split, write results/test/metrics.json",
    "predict": "write the embeddings and features of the test split (results/predict)",
}
SUMMARY = {
    "synth": "compose a Clotho-layout dataset of scenes (synthetic, or real with --sounds)",
    "sounds": "a sound bank of real recordings (tuxpaint, CSV, ESC-50, FSD50K)",
    "augment": "paraphrase training captions with a language model, keep the closest",
    "data-check": "scan a dataset copy for what training would trip on, before training",
    "prepare": "write a 48 kHz mono copy of a dataset once (faster training)",
    "search": "type a sentence, get the matching clips of a folder, ranked",
    "probe": "the compositional probe (event order, counts) of a trained model",
    "compare": "test results of several runs side by side",
    "export": "turn a checkpoint into a self-contained model folder (Hugging Face style)",
    "serve": "a search page in the browser",
    "sweep": "run a W&B sweep file locally and report the ablation",
    "synth-moments": "long recordings with known event windows (moment retrieval)",
    "localize": "where in a recording a query happens: localize --model RUN AUDIO QUERY",
}


def help_text() -> str:
    width = max(map(len, [*TRAINING, *SUMMARY]))
    lines = ["usage: coattn <command> [options]    (coattn <command> --help for its options)", "",
             "coattn: language-based audio retrieval with co-attention.", "",
             "Start here (in a clone of the repository):",
             f"  {'make demo':<{width + 2}}  install, fetch real sounds, train dual encoder + co-attention, compare",
             f"  {'make test':<{width + 2}}  install, then run the whole test suite", "",
             "Training and evaluation (Lightning):"]
    lines += [f"  {k:<{width}}    {v}" for k, v in TRAINING.items()]
    lines += ["", "Tools:"] + [f"  {k:<{width}}    {SUMMARY[k]}" for k in TOOLS]
    lines += ["", "Errors print one line `coattn: error: ...` (exit 1); COATTN_DEBUG=1 shows the traceback."]
    return "\n".join(lines)


def _run_tool(name: str, argv: list[str]) -> int:
    """A tool's exit code; an error meant for people (``UserFacingError``) is one line and exit 1."""
    from coattn.errors import UserFacingError

    module_name, func = TOOLS[name].split(":")
    try:
        return int(getattr(importlib.import_module(module_name), func)(argv) or 0)
    except UserFacingError as exc:
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 2 if not argv else 0
    if _moment_config(argv):  # a MomentDataModule config: the moment retrieval app (coattn/train/moments.py)
        from coattn.train.moments import run as run_moments

        return run_moments(argv)
    from coattn.train.cli import run

    return run(None if args is None else argv)


def _moment_config(argv: list[str]) -> bool:
    """Whether a ``--config`` file of ``argv`` trains moment retrieval (its data is a MomentDataModule)."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                if "MomentDataModule" in f.read():
                    return True
        except OSError:
            pass
    return False  # None: LightningCLI reads sys.argv (DDP relaunches)


if __name__ == "__main__":
    sys.exit(main())
