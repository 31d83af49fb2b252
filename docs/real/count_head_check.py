"""What the count head reads on a split: per event named in a caption, the count the caption claims (text side)
and the occurrences found in the clip (audio side), against the true count in the scene metadata; with --betas,
also the probes with the count check's weight beta set by hand.

    python docs/real/count_head_check.py --config experiments/real/coattn.yaml \
        --ckpt_path RUN/checkpoints/best.ckpt [--split test] [--betas 0.25 0.5 1 2 1e4] [more config overrides]

Each caption of a clip with timings is scored against its own clip; the tokens that name event e (the scene's
phrase spans) give e's claimed count c and found count n (their mean over those tokens). Prints, per true count,
how often round(c) and round(n) are right and the mean n: the count probe needs both sides right; then, on the
count-probe items, the changed event's found count under the true and the count-changed caption (the same n when
the audio side reads the clip alone). --betas prints
the order and count probes (pair / fused) at the trained beta and at each given one: how much of the count probe
the head's counts could carry at another weight. A diagnostic of round 6 (docs/ablations.md): run the sweep on
the validation split, never to pick a test number.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt_path", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--betas", nargs="*", type=float, default=[], help="also the probes at these betas")
    a, rest = p.parse_known_args(argv)
    from coattn.counting import occurrences, pair_counts
    from coattn.model import CoAttnModel
    from coattn.scenes import phrase_spans, read_metadata, split_scenes
    from coattn.time_binding import token_events
    from coattn.tools.probe import _data_module, split_audio_features
    from coattn.train.cli import parse_only

    model = CoAttnModel.from_checkpoint(a.ckpt_path)
    if model.count_head is None:
        print(f"{a.ckpt_path}: this model has no count head (model.count_head)", file=sys.stderr)
        return 2
    dm = _data_module(parse_only(["test", "--config", a.config, *rest]).config.test.data)
    split = dm.split(a.split)
    scenes = split_scenes(read_metadata(dm.root), split.audio_dir.name, split.fnames)
    audio = split_audio_features(model, dm.clip_dataset(a.split), a.batch_size)
    pa = model.prepare_audio(audio)
    table: dict[int, list[tuple[int, int, float]]] = defaultdict(list)  # true count -> (claim ok, found ok, n)
    with torch.no_grad():
        for clip, caps in enumerate(split.captions):
            scene = scenes[clip]
            if scene is None:
                continue
            true = [sum(o[0] == e for o in scene.occurrences) for e in range(scene.n_events)]
            pt = model.prepare_text(model.encode_text(list(caps)))
            rows = torch.arange(len(caps))
            found = occurrences(*pair_counts(model, pt, rows, pa, torch.full((len(caps),), clip)))  # (N, L)
            claimed = pt.count.claimed
            tokens = token_events(model.text_encoder.token_offsets(list(caps)),
                                  [phrase_spans(c, scene) for c in caps], pt.mask.shape[1])
            for i in range(len(caps)):
                for e in set(tokens[i][tokens[i] >= 0].tolist()):
                    sel = tokens[i] == e
                    n, c = float(found[i][sel].mean()), float(claimed[i][sel].mean())
                    table[true[e]].append((int(round(c) == true[e]), int(round(n) == true[e]), n))
    print(f"count head of {a.ckpt_path} on the {a.split} split")
    print("| true count | events named | claimed right | found right | mean found |")
    print("|---:|---:|---:|---:|---:|")
    for k in sorted(table):
        rows_k = table[k]
        print(f"| {k} | {len(rows_k)} | {sum(r[0] for r in rows_k) / len(rows_k):.2f} | "
              f"{sum(r[1] for r in rows_k) / len(rows_k):.2f} | {sum(r[2] for r in rows_k) / len(rows_k):.2f} |")
    claim_shift(model, dm, split, scenes, pa)
    if a.betas:
        beta_sweep(model, dm, split, audio, a.betas)
    return 0


def probe_items(dm, split) -> list:
    """The split's probe items (``coattn.probe.ProbeItem``) from the variants ``coattn synth`` wrote."""
    from coattn.probe import items_from_metadata

    captions = [c for caps in split.captions for c in caps]
    caption_clip = [i for i, caps in enumerate(split.captions) for _ in caps]
    return items_from_metadata(Path(dm.root) / "synth_metadata.json", split.audio_dir.name, split.fnames, captions,
                               caption_clip)


def claim_shift(model, dm, split, scenes, pa) -> None:
    """Does the found count follow the caption? For each count-probe item (a caption and the same words with one
    count changed, on the caption's clip), the found count n of the changed event under each caption. An audio side
    that reads the clip alone finds the same n under both; one that reads the caption finds the claim."""
    from coattn.counting import occurrences, pair_counts
    from coattn.scenes import phrase_spans
    from coattn.time_binding import token_events

    items = [it for it in probe_items(dm, split) if it.kind == "count"]
    shifts: dict[int, list[tuple[float, float]]] = defaultdict(list)  # claim change -> (n true, n variant)
    with torch.no_grad():
        for it in items:
            texts, scene = [it.true, it.variant], scenes[it.clip]
            pt = model.prepare_text(model.encode_text(texts))
            rows = torch.arange(2)
            found = occurrences(*pair_counts(model, pt, rows, pa, torch.full((2,), it.clip)))
            tokens = token_events(model.text_encoder.token_offsets(texts), [phrase_spans(t, scene) for t in texts],
                                  pt.mask.shape[1])
            per = [{e: (float(pt.count.claimed[i][tokens[i] == e].mean()), float(found[i][tokens[i] == e].mean()))
                    for e in set(tokens[i][tokens[i] >= 0].tolist())} for i in range(2)]
            common = [e for e in per[0] if e in per[1]]
            if not common:
                continue
            e = max(common, key=lambda e: abs(per[1][e][0] - per[0][e][0]))
            shifts[round(per[1][e][0] - per[0][e][0])].append((per[0][e][1], per[1][e][1]))
    print(f"\nthe changed event's found count n, true caption -> count-changed caption ({len(items)} items)")
    print("| claim changed by | items | mean n (true caption) | mean n (changed caption) |")
    print("|---:|---:|---:|---:|")
    for d in sorted(shifts):
        v = shifts[d]
        print(f"| {d:+d} | {len(v)} | {sum(x[0] for x in v) / len(v):.2f} | {sum(x[1] for x in v) / len(v):.2f} |")


def beta_sweep(model, dm, split, audio, betas: list[float]) -> None:
    """The order and count probes (pair / fused) at the trained beta, then at each of ``betas``."""
    import math

    from coattn.probe import run_probe

    items = probe_items(dm, split)
    trained = float(model.count_head.log_beta.detach())
    print(f"\nprobes with beta set by hand ({len(items)} items), pair / fused")
    print("| beta | order | count |")
    print("|---|---|---|")
    for beta in [None, *betas]:
        with torch.no_grad():
            model.count_head.log_beta.fill_(trained if beta is None else math.log(beta))
        r = run_probe(model, audio, items, float(model.fusion_lambda))
        name = f"{math.exp(trained):.3f} (trained)" if beta is None else f"{beta:g}"
        cells = [f"{r[k]['pair']:.3f} / {r[k].get('fused', float('nan')):.3f}" if k in r else "-" for k in ("order", "count")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    with torch.no_grad():
        model.count_head.log_beta.fill_(trained)


if __name__ == "__main__":
    sys.exit(main())
