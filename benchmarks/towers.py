"""The aisfx tower's forward vs the aisfx package's own, side by side on the same clips, one thread.

    python benchmarks/towers.py [--repeats 5] [--clip-seconds 10]

Clips: the Clotho sample recordings (shared/data/clotho/audio_sample, or --audio-dir), each cut to
the tower's window (start crop, zero padding) and written to a temporary 44.1 kHz WAV, so that
both sides start from the same file:

    package  aisfx.spectrogram.spectrogram_librosa.compute_spectrogram(file) (librosa.load + peak
             normalisation + librosa mel + log10), spectrogram_normalize('original'), transpose to
             (time, mel) as its network takes it, CrossNet.get_embedding
    ours     soundfile.read(file) + AisfxAudioEncoder.forward (torch front end, conv blocks, frames,
             masked max)

both one clip at a time (the package has no batching), best of ``--repeats`` (interleaved) per
clip, summed over clips. The ratio ours / package is the figure (target <= 1.5); the load average
is printed before and after (benchmarks/loadavg.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadavg import LoadAverage  # noqa: E402


def package_model():
    from aisfx.inference import load_bestModel

    from coattn.encoders.aisfx import package_checkpoint

    with torch.serialization.safe_globals([np.core.multiarray.scalar, np.dtype, np.dtypes.Int64DType]):
        weights, ds_dict = torch.load(package_checkpoint(), map_location="cpu", weights_only=True)
    return load_bestModel(weights, ds_dict, "cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-dir", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import soundfile as sf
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    from coattn.audio import load_clip
    from coattn.encoders import AisfxAudioEncoder

    samples = Path("shared") / "data" / "clotho" / "audio_sample"  # next to the clone, or to a worktree's folder
    candidates = [Path(a.audio_dir)] if a.audio_dir else [REPO.parent / samples, REPO.parents[1] / samples]
    folder = next((d for d in candidates if d.is_dir()), None)
    if folder is None:
        print(f"no audio folder among {[str(d) for d in candidates]}; pass --audio-dir", file=sys.stderr)
        return 1
    tower = AisfxAudioEncoder(clip_seconds=a.clip_seconds)
    theirs_net = package_model()
    files = sorted(folder.glob("*.wav"))
    with tempfile.TemporaryDirectory() as tmp, LoadAverage():
        windows = []
        for i, f in enumerate(files):
            wave = load_clip(f, tower.sample_rate, tower.clip_samples, "start", pad="zeros")
            path = os.path.join(tmp, f"clip{i}.wav")
            sf.write(path, wave.numpy(), tower.sample_rate, subtype="FLOAT")
            windows.append(path)

        def ours(path: str) -> torch.Tensor:
            audio, _ = sf.read(path, dtype="float32")
            with torch.no_grad():
                return tower(torch.from_numpy(audio)[None]).pooled[0]

        def package(path: str) -> torch.Tensor:
            spec = spectrogram_normalize(compute_spectrogram(path, 44100.0, 2048, 1024, 96, 0.0, 22050.0)).T
            with torch.no_grad():
                return theirs_net.get_embedding(torch.Tensor(spec[None]))[0]

        for p in windows[:1]:  # warm-up: librosa's caches, torch's first-call costs
            ours(p), package(p)
        best = {"ours": [float("inf")] * len(windows), "package": [float("inf")] * len(windows)}
        diff = 0.0
        for _ in range(a.repeats):
            for i, p in enumerate(windows):
                for name, fn in (("ours", ours), ("package", package)):
                    t = time.perf_counter()
                    out = fn(p)
                    best[name][i] = min(best[name][i], time.perf_counter() - t)
                    if name == "ours":
                        mine = out
                diff = max(diff, float((mine - out).abs().max()))
        total = {k: sum(v) for k, v in best.items()}
        print(f"{len(windows)} clips of {a.clip_seconds:g} s from {folder}, 1 thread, best of {a.repeats}:")
        print(f"  package (librosa spectrogram + get_embedding): {total['package'] * 1000 / len(windows):7.1f} ms/clip")
        print(f"  ours    (AisfxAudioEncoder.forward)          : {total['ours'] * 1000 / len(windows):7.1f} ms/clip")
        print(f"  ratio ours / package: {total['ours'] / total['package']:.2f}x (target <= 1.5); "
              f"max |pooled difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
