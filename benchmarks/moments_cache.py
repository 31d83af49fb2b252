"""Moment training with frozen pretrained towers: one training step that runs the towers (read the WAVs, aisfx
on 16 crops, MiniLM on 16 queries) vs one that reads the feature cache (crops sliced from the cached stitched
indices, cached query tokens). Same head, same batch, forward + backward; the towers' one-time indexing is
reported apart (it is paid once per recording, whatever the number of epochs, seeds and variants).

    OMP_NUM_THREADS=1 python benchmarks/moments_cache.py [--data data/moments_real] [--steps 5] [--cache DIR]

Prints the median seconds per step of each and their ratio, with the load average (the machine is shared).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from coattn.audio import load_audio
from coattn.coattention import CoAttentionCascade
from coattn.encoders import AisfxAudioEncoder, HFTextEncoder
from coattn.model import CoAttnModel
from coattn.moments.cache import IndexCache
from coattn.moments.head import frame_targets, moment_loss
from coattn.moments.model import MomentModel
from coattn.train.moments import rebase_windows
from data_modules.moments import MomentTrainDataset, collate_train, read_moments


def step(mm: MomentModel, batch: dict, cache: IndexCache | None) -> float:
    t0 = time.perf_counter()
    m, windows = mm.model, batch["windows"]
    if cache is not None:
        audio, start = cache.crops(batch["paths"], batch["starts"].tolist())
        text = cache.text(batch["queries"])
        windows = rebase_windows(windows, start, mm.num_frames * mm.frame_seconds)
    else:
        audio, text = m.encode_audio(batch["audio"]), m.encode_text(batch["queries"])
    idx = torch.arange(len(batch["queries"]))
    logits, offsets = mm.pair_outputs(audio, text, idx, idx[:, None])
    labels, target = frame_targets(windows, logits.shape[-1], mm.frame_seconds)
    moment_loss(logits, offsets, labels, target, mm.frame_seconds, 10.0)["loss"].backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/moments_real")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cache", default=None, help="cache folder (default: a temporary one, built here)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = CoAttnModel(AisfxAudioEncoder(freeze=True), HFTextEncoder("package:all-minilm-l6-v2", max_length=32,
                                                                      freeze=True),
                        CoAttentionCascade(kind="iterating", depth=2, width=256, heads=4, ffn_dim=512, dropout=0.1,
                                           pooling="attention", positions="relative"),
                        embed_dim=256, dual_pooling="encoder", dual_projection="clap", feature_norm=True)
    mm = MomentModel(model, index_hop=9.0).train()
    queries = read_moments(f"{a.data}/train.jsonl", f"{a.data}/audio")[: a.steps * a.batch]
    ds = MomentTrainDataset(queries, mm.sample_rate, mm.clip_samples, 0.8, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = IndexCache(a.cache or tmp, mm, load_audio)
        t0 = time.perf_counter()
        cache.build([q.audio for q in queries], [q.query for q in queries])
        built, build_s = cache.stats["recordings_built"], time.perf_counter() - t0
        ds.load = False
        cached = [[ds[i] for i in range(s * a.batch, (s + 1) * a.batch)] for s in range(a.steps)]
        ds.load = True
        times = {"towers": [], "cache": []}
        for s in range(a.steps):
            t0 = time.perf_counter()
            raw = collate_train([ds[i] for i in range(s * a.batch, (s + 1) * a.batch)])  # WAV reads: part of it
            times["towers"].append(time.perf_counter() - t0 + step(mm, raw, None))
            t0 = time.perf_counter()
            c = collate_train(cached[s])
            times["cache"].append(time.perf_counter() - t0 + step(mm, c, cache))
    tw, ca = statistics.median(times["towers"]), statistics.median(times["cache"])
    load = os.getloadavg()
    print(f"batch {a.batch}, {a.steps} steps, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"step running the towers (WAV read + aisfx + MiniLM + head): {tw:.3f} s (median)")
    print(f"step reading the feature cache (index slices + cached tokens + head): {ca:.3f} s (median)")
    print(f"speedup: {tw / ca:.1f}x per step")
    if built:
        print(f"one-time index build: {built} recordings in {build_s:.1f} s ({build_s / built:.2f} s per recording)")


if __name__ == "__main__":
    main()
