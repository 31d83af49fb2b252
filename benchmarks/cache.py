"""A frozen-encoder training epoch with and without the feature cache, side by side in one run.

    python benchmarks/cache.py                  # 64 synthetic 10 s clips, HTSAT-mini + tiny RoBERTa, frozen
    python benchmarks/cache.py --clips 128 --batch-size 32

For each head (``none``: the dual-encoder baseline, whose step is little more than the
features; ``iterating``: the demo's co-attention cascade, depth 2, width 128) one epoch of the same
model on the same data:
    no cache     the data module decodes + resamples every clip, both encoders run every step
    warm cache   ``feature_cache`` already built: steps read memory-mapped features, no audio is decoded
plus, once, the cold-cache epoch (builds the cache: one encoder pass per clip and caption, then
trains from it; the encoders are the same for both heads, so one cache serves both). Each epoch is
timed from ``on_train_epoch_start`` to ``on_train_epoch_end`` (no validation). Target: warm cache
>= 20x faster than no cache. The cache removes decoding and the encoders, not the head: with a
cascade the B x B pair passes (and their backward) remain and bound the ratio.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class EpochTimer:
    def __init__(self):
        import lightning.pytorch as pl

        class _T(pl.Callback):
            def on_train_epoch_start(s, trainer, module):
                s.t0 = time.perf_counter()

            def on_train_epoch_end(s, trainer, module):
                self.seconds = time.perf_counter() - s.t0

        self.callback, self.seconds = _T(), float("nan")


def make_module(args, cache: str | None, cascade: str):
    import lightning.pytorch as pl
    import torch

    from coattn.coattention import CoAttentionCascade
    from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
    from coattn.train.evaluation import Evaluation
    from coattn.train.module import CoAttnRetrieval
    from coattn.train.optim import Optim

    pl.seed_everything(0, verbose=False)  # same weights in every run: one cache key
    torch.set_num_threads(args.threads)
    return CoAttnRetrieval(
        audio_encoder=ClapAudioEncoder("HTSAT-mini", freeze=True),
        text_encoder=TinyTextEncoder(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                                     vocab_size=1000, max_length=32, freeze=True),
        cascade=CoAttentionCascade(kind=cascade, depth=2, width=128, heads=4, ffn_dim=256, dropout=0.1),
        embed_dim=128, optim=Optim(lr=1e-3, warmup_steps=1), evaluation=Evaluation(bootstrap=0), feature_cache=cache)


def run_epoch(args, root: Path, cache: str | None, cascade: str) -> float:
    import lightning.pytorch as pl

    from data_modules import ClothoDataModule

    dm = ClothoDataModule(root=str(root), batch_size=args.batch_size, eval_batch_size=args.batch_size,
                          num_workers=args.workers, train_items="clip")
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[timer.callback])
    trainer.fit(make_module(args, cache, cascade), datamodule=dm)
    return timer.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: decode in the main process)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=str, default="none,iterating", help="cascades to time, comma-separated")
    p.add_argument("--data", type=str, default=None, help="existing Clotho-layout folder (default: synthesise one)")
    args = p.parse_args()

    import logging
    import warnings

    import torch

    from coattn.tools.synth import synthesize

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="coattn-bench-cache-") as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            synthesize(root, seed=0, counts={"development": args.clips, "validation": 2, "evaluation": 2},
                       seconds=args.seconds, log=lambda m: None)
        cache = str(Path(tmp) / "cache")
        rows = []  # (head, epoch, seconds, baseline seconds)
        for i, cascade in enumerate(args.heads.split(",")):
            base = run_epoch(args, root, None, cascade)
            rows.append((cascade, "no cache", base, base))
            if i == 0:
                rows.append((cascade, "cold cache (build + epoch)", run_epoch(args, root, cache, cascade), base))
            rows.append((cascade, "warm cache", run_epoch(args, root, cache, cascade), base))
    print(f"frozen HTSAT-mini + tiny RoBERTa; {args.clips} clips x {args.seconds:g} s, batch {args.batch_size}, "
          f"{args.workers} workers, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| head | epoch | seconds | clips/s | speed-up vs no cache |\n|---|---|---:|---:|---:|")
    for head, name, sec, base in rows:
        print(f"| {head} | {name} | {sec:.2f} | {args.clips / sec:.1f} | {base / sec:.1f}x |")
    for head, name, sec, base in rows:
        if name == "warm cache":
            print(f"{head}: warm cache / no cache = {base / sec:.1f}x (target >= 20x: "
                  f"{'met' if base / sec >= 20 else 'NOT met'})")


if __name__ == "__main__":
    from loadavg import LoadAverage

    with LoadAverage():
        main()
