"""``coattn probe``: the compositional probe (order and count) of a trained model on a split.

    coattn probe --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt [--split test]
    coattn probe --captions ../shared/data/clotho/clotho_captions_evaluation.csv      # applicability only

Every caption of the split is scored against its own clip twice: as written, and with the events
in reverse order (``order``) or one count changed (``count``); accuracy = share of captions whose
true text wins, for the pair branch, the dual branch and the fused score (chance 0.5; see
``coattn.probe``). Variants come from ``<root>/synth_metadata.json`` when ``coattn synth`` wrote
the data (exact: same words, events reversed), else from rewriting the captions
(``coattn.captions``), which applies only to captions that state an order: the counts are printed.
Writes ``<default_root_dir>/results/probe/probe.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coattn.io import atomic_write_text


def _captions_only(paths: list[str]) -> int:
    from coattn.probe import applicability
    from data_modules.splits import read_csv_rows

    for p in paths:
        rows = read_csv_rows(p, ())
        caps = [v for _, row in rows for k, v in row.items() if k and k.startswith("caption") and v and v.strip()]
        a = applicability(caps)
        print(f"{p}: {a['captions']} captions; order rewrite applies to {a['order']} "
              f"({100 * a['order'] / max(1, a['captions']):.1f} %), count rewrite to {a['count']} "
              f"({100 * a['count'] / max(1, a['captions']):.1f} %)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="the experiment config (its data section says where the split is)")
    p.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", help="checkpoint of `coattn fit`")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--metadata", help="variants file (default: <data root>/synth_metadata.json if present)")
    p.add_argument("--out", help="output folder (default <default_root_dir>/results/probe)")
    p.add_argument("--captions", nargs="+", help="only count how many captions of these CSV files each rewrite "
                                                 "applies to (no model)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder batch")
    p.add_argument("--items", action="store_true", help="also write probe_items.jsonl: every item (kind, clip, "
                   "true caption, variant) with each branch's two scores, for breakdowns of your own")
    a, rest = p.parse_known_args(argv)
    from coattn.errors import DataNotFoundError

    for path in a.captions or []:  # every input checked before anything is read or loaded
        if not Path(path).is_file():
            raise DataNotFoundError(f"--captions {path}: no such caption file")
    if a.captions:
        return _captions_only(a.captions)
    if not a.config or not a.ckpt_path:
        p.error("--config and --ckpt_path are required (or --captions FILE for the applicability count)")
    if a.metadata:
        from coattn.probe import read_metadata

        read_metadata(a.metadata)  # a bad --metadata: one line now, not a traceback after the model loaded
    return probe(a, rest)


def split_audio_features(model, ds, batch_size: int = 16):
    """Every clip of ``ds`` (a data module's ``clip_dataset``: its crop and padding) through the audio
    tower, zero-padded frames masked, as ``coattn test`` encodes them."""
    import torch

    from coattn.features import SequenceFeatures
    from data_modules.datasets import collate

    feats = []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            b = collate([ds[j] for j in range(i, min(len(ds), i + batch_size))])
            feats.append(model.encode_audio(b.audio, b.audio_lengths))
    return SequenceFeatures.cat(feats)


def probe(a: argparse.Namespace, overrides: list[str]) -> int:
    from coattn.errors import UserFacingError
    from coattn.model import CoAttnModel
    from coattn.probe import format_probe, items_by_rewriting, items_from_metadata, probe_scores, run_probe
    from coattn.train.cli import parse_only

    try:
        model = CoAttnModel.from_checkpoint(a.ckpt_path)
        cli = parse_only(["test", "--config", a.config, *overrides])
        cfg = cli.config.test
        dm = _data_module(cfg.data)
        split = dm.split(a.split)
    except (UserFacingError, FileNotFoundError, ValueError) as exc:
        print(f"coattn probe: {exc}", file=sys.stderr)
        return 2
    captions = [c for caps in split.captions for c in caps]
    caption_clip = [i for i, caps in enumerate(split.captions) for _ in caps]
    meta = Path(a.metadata) if a.metadata else Path(getattr(dm, "root", ".")) / "synth_metadata.json"
    if meta.is_file():
        items, source = items_from_metadata(meta, split.audio_dir.name, split.fnames, captions, caption_clip), str(meta)
    else:
        items, source = items_by_rewriting(captions, caption_clip), "rewritten captions (coattn.captions)"
    audio = split_audio_features(model, dm.clip_dataset(a.split), a.batch_size)
    scores = probe_scores(model, audio, items, float(model.fusion_lambda)) if items else {}
    result = run_probe(model, audio, items, float(model.fusion_lambda), scores=scores)
    print(f"probe of {a.ckpt_path} on the {a.split} split ({len(split)} clips, {len(captions)} captions; "
          f"variants: {source})")
    print(format_probe(result) or "no caption of this split has a variant")
    out = Path(a.out or Path(cfg.trainer.default_root_dir or ".") / "results" / "probe")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "probe.json", json.dumps({"ckpt_path": a.ckpt_path, "split": a.split, "variants": source,
                                                      "fusion_lambda": float(model.fusion_lambda),
                                                      "n_captions": len(captions), "probe": result}, indent=1))
    if a.items and items:
        rows = []
        for k, it in enumerate(items):
            row = {"kind": it.kind, "clip": split.fnames[it.clip], "true": it.true, "variant": it.variant}
            for branch, (s_true, s_var) in scores.items():
                row[f"{branch}_true"], row[f"{branch}_variant"] = float(s_true[k]), float(s_var[k])
            rows.append(row)
        atomic_write_text(out / "probe_items.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        print(f"written to {out / 'probe_items.jsonl'} ({len(rows)} items)")
    print(f"written to {out / 'probe.json'}")
    return 0


def _data_module(spec):
    """The data module of a parsed config section (class_path + init_args), built without the model."""
    from jsonargparse import ArgumentParser

    from data_modules.base import AudioCaptionDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AudioCaptionDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": spec.as_dict()})).data


if __name__ == "__main__":
    sys.exit(main())
