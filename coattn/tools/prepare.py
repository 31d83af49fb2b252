"""``coattn prepare``: write a 48 kHz mono copy of a dataset once, so training only decodes and crops.

    coattn prepare /data/clotho /data/clotho48k --workers 2
    # then: data.init_args.root=/data/clotho48k (same layout, same file names, same CSVs)

Resampling 44.1 -> 48 kHz is most of the per-clip cost of the loader (benchmarks/data_loading.py
measures it). The copy mirrors the source tree: audio files keep their names and containers
(.wav/.flac as 16-bit PCM, .ogg as Vorbis), every other file (caption CSVs...) is copied as is.
Resumable (outputs newer than their source are skipped) and atomic (temp file + rename).
Unreadable audio is copied byte for byte, so ``coattn data-check`` still reports it; symlinks
pointing outside the source are not followed (the loaders would reject them too).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

AUDIO_EXTENSIONS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def convert(src: str, dst: str, sample_rate: int = 48000) -> str:
    """One file; returns 'converted', 'copied' (not audio / unreadable) or 'skipped' (up to date)."""
    s, d = Path(src), Path(dst)
    if d.exists() and d.stat().st_mtime >= s.stat().st_mtime:
        return "skipped"
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f".{d.name}.tmp{os.getpid()}")
    fmt = AUDIO_EXTENSIONS.get(s.suffix.lower())
    status = "copied"
    if fmt is None:
        shutil.copyfile(s, tmp)
    else:
        import soundfile as sf

        from coattn.audio import AudioReadError, load_audio

        try:
            wave = load_audio(s, sample_rate).numpy()
            # resampling rings slightly above full scale; clip instead of letting PCM conversion wrap
            sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, format=fmt[0], subtype=fmt[1])
            status = "converted"
        except AudioReadError:
            shutil.copyfile(s, tmp)
            status = "unreadable"
    os.replace(tmp, d)
    return status


def _convert_star(args):
    return convert(*args)


def plan(src_root: Path, dst_root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(source, destination) pairs for every file, and the symlinks skipped for pointing outside."""
    jobs, skipped = [], []
    src_resolved = src_root.resolve()
    for dirpath, _, files in os.walk(src_root):
        for name in sorted(files):
            s = Path(dirpath) / name
            if s.is_symlink() and not s.resolve().is_relative_to(src_resolved):
                skipped.append(str(s))
                continue
            jobs.append((str(s), str(dst_root / s.relative_to(src_root))))
    return jobs, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="dataset root (Clotho or AudioCaps layout)")
    p.add_argument("dst", help="output root (created; must not be inside src)")
    p.add_argument("--sample-rate", type=int, default=48000, help="CLAP's rate (default 48000)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args(argv)
    src, dst = Path(a.src), Path(a.dst)
    if not src.is_dir():
        p.error(f"{src} is not a folder")
    if dst.resolve().is_relative_to(src.resolve()):
        p.error("dst must not be inside src (the copy would be copied again)")
    jobs, outside = plan(src, dst)
    for s in outside:
        print(f"skipped symlink pointing outside {src}: {s}", file=sys.stderr)
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    args = [(s, d, a.sample_rate) for s, d in jobs]
    step = max(1, len(args) // 20)
    pool = get_context("fork").Pool(a.workers) if a.workers > 1 else None
    try:
        results = pool.imap(_convert_star, args, chunksize=4) if pool else map(_convert_star, args)
        for i, status in enumerate(results, 1):
            counts[status] = counts.get(status, 0) + 1
            if i % step == 0 or i == len(args):
                rate = i / max(1e-9, time.perf_counter() - t0)
                print(f"  {i}/{len(args)} files ({rate:.0f}/s)", flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    print(f"done in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f" -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
