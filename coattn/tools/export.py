"""``coattn export``: turn a ``coattn fit`` checkpoint into a self-contained model folder.

    coattn export --ckpt_path runs/demo/checkpoints/best.ckpt exported/demo [--license mit]
    python -c "from coattn import CoAttnModel; CoAttnModel.from_pretrained('exported/demo')"
    hf upload user/coattn-demo exported/demo          # share it on the Hub (a token and the network)

A Lightning checkpoint carries the whole training state and configuration and only coattn's
commands read it. The folder (coattn/hub.py) holds the weights in safetensors, the architecture in
``config.json`` (no training setting, no machine path: it loads on any machine, CLAP checkpoint
and RoBERTa download not needed), the tokenizer, and a model card ``README.md``
(coattn/model_card.py) with the data and command of the run and, when ``coattn test`` ran on this
checkpoint, its test metrics with confidence intervals. The export then loads the folder back
and checks that every weight is identical.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path


def check_out_dir(out: Path, overwrite: bool) -> None:
    """``out`` can be created and written (the run folders' probe, ``coattn.train.runs.check_writable``) and
    is empty unless ``overwrite``; ``OutputError`` naming it if not."""
    from coattn.errors import OutputError
    from coattn.train.runs import check_writable

    if out.exists() and not out.is_dir():
        raise OutputError(f"OUT_DIR {out}: a file stands there; choose a folder name")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"OUT_DIR {out} is not empty; pass --overwrite to replace its files, or choose another "
                          "folder")
    check_writable(out, "OUT_DIR", hint="or choose another OUT_DIR")


def check_metrics(path: str) -> None:
    """``--metrics``: a ``metrics.json`` of ``coattn test`` (the checks of ``coattn compare``), named if not."""
    from coattn.errors import DataError
    from coattn.tools.compare import read_metrics

    try:
        read_metrics(path)
    except DataError as exc:
        raise DataError(f"--metrics {exc}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="the model folder to write")
    p.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True, help="checkpoint of `coattn fit`")
    p.add_argument("--license", default=None,
                   help="licence identifier for the card's metadata (Hub ids: mit, apache-2.0, cc-by-4.0, other...); "
                        "mind the training data's licences")
    p.add_argument("--name", default=None, help="model name in the card (default: the folder's name)")
    p.add_argument("--repo-id", default=None, help="Hub id the card's example loads (default: the folder's path)")
    p.add_argument("--run-dir", default=None,
                   help="run folder with the fit configuration and results/test/metrics.json "
                        "(default: <run> of <run>/checkpoints/CKPT)")
    p.add_argument("--metrics", default=None,
                   help="metrics.json of `coattn test` to put in the card "
                        "(default: the run's, if it is this checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing, non-empty OUT_DIR")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import torch

    from coattn import model_card
    from coattn.errors import UserFacingError
    from coattn.hub import WEIGHTS_FILE
    from coattn.io import load_checkpoint
    from coattn.model import CoAttnModel

    out = Path(args.out_dir)
    mm = None
    try:
        check_out_dir(out, args.overwrite)  # before the checkpoint is read: a one-line error naming the folder
        if args.metrics:
            check_metrics(args.metrics)
        meta = load_checkpoint(args.ckpt_path, mmap=True)  # epoch / step for the card (memory-mapped: cheap)
        if any(k.startswith("mm.head.") for k in meta.get("state_dict", {})):  # a moment model: + moment.json
            from coattn.tools.localize import load_moment_checkpoint

            mm = load_moment_checkpoint(args.ckpt_path)
            model = mm.model
        else:
            model = CoAttnModel.from_checkpoint(args.ckpt_path)
        fields = model_card.training(args.ckpt_path, meta, args.run_dir, args.metrics)
    except (UserFacingError, OSError, ValueError) as exc:
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["coattn", "export", *(argv if argv is not None else sys.argv[1:])])
    fields.update(model_name=args.name or out.resolve().name, repo_id=args.repo_id or str(out),
                  provenance=f"Exported by `{command}` (coattn {__import__('coattn').__version__}) from "
                             f"`{Path(args.ckpt_path).name}`.")
    if args.license:
        fields["license_text"] = f"`{args.license}` (the `license` field of this card's metadata)."
    (out / "README.md").unlink(missing_ok=True)  # the mixin keeps an existing card: make a new one
    shutil.rmtree(out / "text_encoder", ignore_errors=True)  # no stale tokenizer of another model
    try:
        model.save_pretrained(out, model_card_kwargs=fields)
    except OSError as exc:  # a full disk, the folder removed meanwhile
        print(f"coattn: error: could not write the model folder {out} ({exc.strerror or exc})", file=sys.stderr)
        return 1
    if args.license:
        from huggingface_hub import ModelCard

        card = ModelCard.load(out / "README.md")
        card.data.license = args.license
        card.save(out / "README.md")
    if mm is not None:
        from coattn.moments.folder import load_moment_folder, save_moment_folder

        save_moment_folder(mm, out)
        model = mm
    # the folder alone must give back every weight, bit for bit
    again = CoAttnModel.from_pretrained(out) if mm is None else load_moment_folder(out)
    ref = model.state_dict()
    bad = [k for k, v in again.state_dict().items() if not torch.equal(v, ref[k])]
    if bad or set(ref) != set(again.state_dict()):
        print(f"coattn export: {out} does not reload to the same weights ({bad[:3]})", file=sys.stderr)
        return 1
    size = (out / WEIGHTS_FILE).stat().st_size / 2 ** 20
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    print(f"exported {args.ckpt_path} -> {out}: {len(ref)} tensors ({size:.1f} MiB), reloaded and checked "
          f"identical; test metrics in the card: {'yes' if 'metrics' in fields else 'no'}\n  " + "\n  ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
