"""Both decoders on the same trained moment heads: what the decoder alone changes (docs/moments.md).

    python docs/moments/decoders.py RUN [RUN ...] [--split test] [--cache runs/feature_cache_moments]
        [--data data/moments_real]

For each run (a moment run folder or checkpoint), the same frame outputs are decoded twice: ``frames`` (each frame
proposes its regressed boundaries, the first round's decoder) and ``spans`` (every span scored by its summed
relevance logits), each with the checkpoint's NMS and top-k; the split's queries come from the feature cache the
runs trained with (no tower runs when it holds them). Prints one row per run and decoder, figures in %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

KEYS = ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95")


def main() -> None:
    from coattn.audio import load_audio
    from coattn.moments.cache import IndexCache
    from coattn.moments.metrics import moment_metrics
    from coattn.tools.localize import load_moment_checkpoint
    from data_modules.moments import read_moments

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", default="runs/feature_cache_moments")
    ap.add_argument("--data", default="data/moments_real")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | prior | decoder | " + " | ".join(KEYS) + " |\n|---|---|---|" + "---:|" * len(KEYS))
    for run in a.runs:
        mm = load_moment_checkpoint(run)
        cache = IndexCache(a.cache, mm, load_audio)
        queries = read_moments(Path(a.data) / f"{a.split}.jsonl", Path(a.data) / "audio")
        gt = [[list(w) for w in q.windows] for q in queries]
        preds: dict[str, list] = {"frames": [], "spans": []}
        with torch.no_grad():
            for q in queries:
                index, text = cache.index(q.audio), cache.text([q.query])
                logits, off = mm.frame_logits(index, text)  # once: both decoders read the same outputs
                for decode in preds:
                    preds[decode].append(mm.decode_windows(logits, off, index, decode=decode).tolist())
        for decode, p in preds.items():
            m = moment_metrics(p, gt)
            print(f"| {run} | {mm.prior} | {decode} | " + " | ".join(f"{100 * m['moment/' + k]:.2f}" for k in KEYS)
                  + " |", flush=True)


if __name__ == "__main__":
    main()
