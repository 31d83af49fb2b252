"""``coattn localize``: where in a recording does the query happen? Prints the top windows.

    coattn localize --model runs/moments data/moments/audio/test_00000.wav "a dog, then a cow" [--top-k 5]
    coattn localize --model runs/moments/checkpoints/best.ckpt long.wav "a dog" --baseline   # dual sliding spans

RUN_OR_CKPT: a checkpoint of ``coattn fit`` on a moment config, its run folder (then
checkpoints/best.ckpt), or a folder of ``coattn export`` of such a checkpoint (moment.json). The recording is read at the tower's rate, indexed once (sliding tower,
stitched frames), and the query localised on the index (coattn/moments/model.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from coattn.errors import CheckpointError, CheckpointNotFoundError


def load_moment_checkpoint(path: str | Path):
    """The MomentModel of a moment checkpoint (or run folder), eval mode, on the CPU."""
    from coattn.io import load_checkpoint
    from coattn.train.moments import build_moment_model

    from coattn.moments.folder import is_moment_folder, load_moment_folder

    p = Path(path)
    if p.is_dir() and is_moment_folder(p):
        return load_moment_folder(p)
    if p.is_dir():
        p = p / "checkpoints" / "best.ckpt"
    if not p.is_file():
        raise CheckpointNotFoundError(f"{p}: no checkpoint; give a moment run folder or its .ckpt file")
    ckpt = load_checkpoint(p, map_location="cpu")
    hp = ckpt.get("hyper_parameters") or {}
    if "cascade" not in hp or not any(k.startswith("mm.head.") for k in ckpt.get("state_dict", {})):
        raise CheckpointError(f"{p}: not a moment retrieval checkpoint (train one with a config of experiments/moments/)")
    mm = build_moment_model(hp)
    if ckpt.get("tokenizer_state") is not None:
        mm.model.text_encoder.load_tokenizer_state(ckpt["tokenizer_state"])
    state = {k[3:]: v for k, v in ckpt["state_dict"].items() if k.startswith("mm.")}
    missing, unexpected = mm.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{p}: weights do not fit the stored configuration ({missing[:3]} {unexpected[:3]})")
    return mm.eval()


def clock(seconds: float) -> str:
    """m:ss.s of a time in seconds (the windows as a player shows them)."""
    m, s = divmod(max(seconds, 0.0), 60.0)
    return f"{int(m)}:{s:04.1f}"


def main(argv: list[str] | None = None) -> int:
    from coattn.audio import load_audio

    ap = argparse.ArgumentParser(prog="coattn localize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="moment run folder, checkpoint, or exported folder")
    ap.add_argument("audio", type=Path)
    ap.add_argument("query")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--baseline", action="store_true", help="the dual encoder's sliding spans instead of the head")
    a = ap.parse_args(argv)
    mm = load_moment_checkpoint(a.model)
    with torch.no_grad():  # a context, not set_grad_enabled(False): called in-process, it must not leak
        t0 = time.perf_counter()
        index = mm.index(load_audio(a.audio, mm.sample_rate))
        t1 = time.perf_counter()
        out = (mm.dual_sliding if a.baseline else mm.localize)(index, a.query, a.top_k)
        t2 = time.perf_counter()
    print(f"{a.audio} ({index.duration:.1f} s): {a.query!r}  [index {t1 - t0:.2f} s, localise {t2 - t1:.3f} s]")
    print("rank  start (s)  end (s)   score   window")
    for r, (s, e, sc) in enumerate(out.tolist(), start=1):
        print(f"{r:4d}  {s:9.2f}  {e:7.2f}  {sc:6.3f}   {clock(s)} - {clock(e)} ({e - s:.1f} s)")
    return 0
