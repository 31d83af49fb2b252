"""Clips per second the data path delivers: decode + resample + crop of 30 s, 44.1 kHz clips.

    python benchmarks/data_loading.py                 # 48 synthetic clips, 0/1/2 workers
    python benchmarks/data_loading.py --clips 96 --workers 0 1 2

A GPU step with batch 32 at 4 steps/s eats 128 clips/s. Three paths are timed on the same clips:
  full      read the whole file, resample all 30 s, crop 10 s (the naive path)
  window    read and resample only the 10 s window (+ filter margin): what the data modules do
  prepared  the same window from a 48 kHz copy written once by `coattn prepare` (no resampling)
Clips are 16-bit mono WAV, like Clotho; they sit in the page cache, so disk speed is not measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from coattn.audio import fit_length, load_audio, load_clip

TARGET = 128.0  # clips/s: batch 32 x 4 steps/s


class Clips(Dataset):
    def __init__(self, paths: list[Path], mode: str, length: int = 480000):
        self.paths, self.mode, self.length = paths, mode, length

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        if self.mode == "full":
            return fit_length(load_audio(self.paths[i], 48000), self.length, "random", g)
        return load_clip(self.paths[i], 48000, self.length, "random", g)


def make_clips(folder: Path, n: int, seconds: float = 30.0, sr: int = 44100) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"clip {i:04d}.wav"
        x = np.cumsum(rng.standard_normal(int(seconds * sr))).astype(np.float32)  # brown noise: broadband
        x = 0.5 * x / np.abs(x).max()
        sf.write(str(p), x, sr, subtype="PCM_16")
        paths.append(p)
    return paths


def rate(paths: list[Path], mode: str, workers: int, batch_size: int = 8, repeats: int = 2) -> float:
    """Best of ``repeats`` passes (the machine is shared: the best pass is the least disturbed)."""
    loader = DataLoader(Clips(paths, mode), batch_size=batch_size, num_workers=workers,
                        persistent_workers=workers > 0)
    best = 0.0
    for _ in range(repeats + (1 if workers else 0)):  # one extra pass pays the worker start-up
        t0 = time.perf_counter()
        n = sum(b.shape[0] for b in loader)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dir", help="keep the generated clips here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the main process (workers always use 1). Default 1: with 2 threads "
                        "on a busy 2-core machine the resampling convolution runs 2-5x slower (oversubscription)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.dir or tmp)
        src, dst = base / "src", base / "prepared"
        src.mkdir(parents=True, exist_ok=True)
        paths = make_clips(src, a.clips)
        from coattn.tools.prepare import convert

        t0 = time.perf_counter()
        for s in paths:
            convert(str(s), str(dst / s.name))
        prep_rate = len(paths) / (time.perf_counter() - t0)
        prepared = [dst / s.name for s in paths]
        print(f"{a.clips} clips of 30 s, 44.1 kHz mono PCM_16 -> (480000,) at 48 kHz; {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads in the main process")
        print(f"coattn prepare (one-off, 1 process): {prep_rate:.1f} clips/s")
        print(f"{'workers':>8} {'full':>10} {'window':>10} {'prepared':>10}   clips/s (target {TARGET:.0f})")
        for w in a.workers:
            r = [rate(paths, "full", w), rate(paths, "window", w), rate(prepared, "window", w)]
            print(f"{w:>8} " + " ".join(f"{x:>10.1f}" for x in r))
    return 0


if __name__ == "__main__":
    from loadavg import LoadAverage

    with LoadAverage():
        code = main()
    sys.exit(code)
