"""The ``coattn`` command: LightningCLI subcommands and the tools, dispatched from one entry point.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
    coattn fit  --config experiments/demo.yaml --print_config      # the full resolved config
    coattn synth data/demo --seed 0                                 # built-in demo dataset

Tools (synth, sounds, augment, data-check, prepare, search, probe, compare, export, serve, sweep) are plain
``main(argv) -> int`` functions under coattn/tools/, imported lazily, so ``coattn synth`` does not pay
for importing Lightning. Errors meant for people (``coattn.errors.UserFacingError``) print one line
``coattn: error: ...`` and exit 1; ``COATTN_DEBUG=1`` shows the traceback as well.
"""
from __future__ import annotations

import importlib
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


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        module_name, func = TOOLS[argv[0]].split(":")
        return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nLightningCLI subcommands: fit, validate, test, predict "
              "(see `coattn fit --help`).\nTools: " + ", ".join(TOOLS))
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
