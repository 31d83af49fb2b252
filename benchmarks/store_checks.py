"""What the feature store's integrity checks cost, side by side with what they guard (issue 22, finding 2).

    python benchmarks/store_checks.py                    # 400 files of 10 s (48 kHz, 16-bit), 3,839 entries
    python benchmarks/store_checks.py --files 1000 --entries 3839

file key    ``stat`` only (size + mtime, the key before) vs ``stat`` + ``coattn.io.file_fingerprint``
            (3 blocks of 4 KiB: start, middle, end), over the same files (warm page cache: the case of
            every run after the first; a cold disk adds 3 small reads per file)
verify      ``FeatureStore.verify`` (CRC-32 of every entry's bytes) over a store of Clotho-sized audio
            entries (32 x 768 float32 + mask + pooled), vs ``FeatureStore.get`` of the same entries
            (the read the run does anyway)
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from coattn.features import SequenceFeatures
from coattn.io import file_fingerprint
from coattn.store import FeatureStore


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--entries", type=int, default=3839)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(a.files):
            path = tmp / "audio" / f"{i:05d}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, (rng.standard_normal(480_000) * 0.1).astype(np.float32), 48_000, subtype="PCM_16")
            paths.append(path)
        stat = best_of(lambda: [(q := os.stat(x)).st_size + q.st_mtime_ns for x in paths])
        both = best_of(lambda: [(os.stat(x).st_size, file_fingerprint(x)) for x in paths])
        mb = sum(x.stat().st_size for x in paths) / 1e6
        print(f"file key, {a.files} files ({mb:.0f} MB): stat {1e6 * stat / a.files:.1f} us/file, "
              f"stat + fingerprint {1e6 * both / a.files:.1f} us/file ({both / max(stat, 1e-9):.1f}x; "
              f"{both:.3f} s for all; 12 KiB read per file vs {mb * 1e3 / a.files:.0f} KB to hash it whole)")

        store = FeatureStore(tmp / "store", {"kind": "bench"})
        keys = [f"k{i}" for i in range(a.entries)]
        for b0 in range(0, a.entries, 2048):
            n = min(2048, a.entries - b0)
            store.write(keys[b0:b0 + n], SequenceFeatures(torch.randn(n, 32, 768), torch.ones(n, 32, dtype=torch.bool),
                                                          torch.randn(n, 768)))
        get = best_of(lambda: FeatureStore(tmp / "store").get(keys))
        verify = best_of(lambda: FeatureStore(tmp / "store").verify(keys, warn=False))
        print(f"verify, {a.entries} entries ({a.entries * 32 * 768 * 4 / 1e6:.0f} MB): get {get:.3f} s, "
              f"verify {verify:.3f} s ({verify / max(get, 1e-9):.2f}x of get), once per split and process")
    print(f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          "1 torch thread)")


if __name__ == "__main__":
    main()
