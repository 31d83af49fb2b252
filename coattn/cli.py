"""Command-line entry point: ``coattn {fit,validate,test,predict}`` (LightningCLI) plus tools.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
    coattn fit  --config experiments/demo.yaml --print_config      # the full resolved config
    coattn synth data/demo --seed 0                                 # built-in demo dataset

Tools (synth, augment, data-check, prepare, search, sweep) are plain ``main(argv) -> int``
functions imported lazily, so ``coattn synth`` does not pay for importing Lightning.
"""
from __future__ import annotations

import importlib
import sys

# name -> "module:function"; each takes the remaining argv and returns an exit code.
TOOLS = {
    "synth": "coattn.synth:main",
    "augment": "coattn.augment:main",
    "data-check": "coattn.data_check:main",
    "prepare": "coattn.prepare:main",
    "search": "coattn.search:main",
    "sweep": "coattn.tools.sweep:main",
}


def build_cli(args: list[str] | None, run: bool = True):
    """The LightningCLI: model ``CoAttnRetrieval``; data any ``AudioCaptionDataModule`` subclass.

    ``CoAttnLightningCLI`` (coattn/runs.py) continues the W&B run of a ``--ckpt_path`` checkpoint and
    gives sweep runs their own output folders; ``WandbSaveConfigCallback`` (callbacks/) saves the
    config as ``coattn_config.yaml`` and puts it, with the git SHA and package versions, into W&B.
    """
    from callbacks.wandb_config import WandbSaveConfigCallback
    from coattn.module import CoAttnRetrieval
    from coattn.safety import SafeLightningCLI  # CoAttnLightningCLI + checked ckpt_path, atomic checkpoints
    from data_modules.base import AudioCaptionDataModule

    return SafeLightningCLI(
        CoAttnRetrieval,
        AudioCaptionDataModule,
        subclass_mode_data=True,
        save_config_callback=WandbSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"parser_mode": "yaml"},
    )


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        module_name, func = TOOLS[argv[0]].split(":")
        return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nLightningCLI subcommands: fit, validate, test, predict "
              "(see `coattn fit --help`).\nTools: " + ", ".join(TOOLS))
        if not argv:
            return 2
        return 0
    from coattn.safety import UserFacingError

    try:
        build_cli(None if args is None else argv)  # None: LightningCLI reads sys.argv (DDP relaunches)
    except UserFacingError as exc:  # bad checkpoint, NaN loss...: the message says it all
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
