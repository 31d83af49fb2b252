"""How much do a *randomly initialised* HTS-AT-mini's clip features already know about the demo's events?

A linear probe (multi-label logistic regression on standardised mean+max pooled frame features,
full batch, 300 AdamW steps) is fitted on the 400 training clips of ``coattn synth data/demo`` and
scored on the 100 validation clips: top-2 precision = how many of each clip's 2 highest-scored
event types are in it (chance 0.21). Each line is one way of running the same random encoder:

    python docs/demo/linear_probe.py            # all settings, ~4 min on 2 CPU cores

This is what ``README.md`` ("Training HTS-AT from scratch") quotes: with laion-clap's training-mode
front end (per-mel-bin batch norm, SpecAugment) the random features lose most of what the raw
log-mel input gives them, which is why the demo trains with ``frozen_norm``, no SpecAugment and
no drop path.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

from coattn.encoders import ClapAudioEncoder

SETTINGS = {
    "log-mel (no HTS-AT), mean+max over time": None,
    "eval mode (bn0 at init = identity on dB)": dict(train=False),
    "train mode, laion-clap default (bn0 batch stats, SpecAugment, drop path 0.1)": dict(train=True),
    "train mode, bn0 batch stats, no SpecAugment": dict(train=True, spec_augment=False),
    "train mode, frozen_norm, no SpecAugment (drop path 0.1)": dict(train=True, spec_augment=False, frozen_norm=True),
    "train mode, frozen_norm, no SpecAugment, drop path 0 (the demo)": dict(train=True, spec_augment=False,
                                                                            frozen_norm=True, drop_path_rate=0.0),
}


def load(root: Path, split: str, meta: dict, types: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for key in sorted(k for k in meta if k.startswith(split + "/")):
        x, sr = sf.read(root / key, dtype="float32")
        x = torchaudio.functional.resample(torch.from_numpy(x), sr, 48000)[:480000]
        xs.append(torch.nn.functional.pad(x, (0, 480000 - len(x))))
        ys.append(torch.tensor([float(any(e["type"] == t for e in meta[key]["events"])) for t in types]))
    return torch.stack(xs), torch.stack(ys)


def features(enc: ClapAudioEncoder | None, x: torch.Tensor, train: bool) -> torch.Tensor:
    out = []
    ref = ClapAudioEncoder("HTSAT-mini").model if enc is None else None
    with torch.no_grad():
        for i in range(0, len(x), 50):
            if ref is not None:  # the input HTS-AT sees: log-mel in dB, (B, 1, T, 64)
                s = ref.logmel_extractor(ref.spectrogram_extractor(x[i:i + 50]))[:, 0]
            else:
                enc.train(train)
                s = enc(x[i:i + 50]).states
            out.append(torch.cat([s.mean(1), s.amax(1)], 1))
    return torch.cat(out)


def probe(ftr, ytr, fva, yva, seed: int = 0) -> float:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-5
    ftr, fva = (ftr - mu) / sd, (fva - mu) / sd
    torch.manual_seed(seed)
    head = torch.nn.Linear(ftr.shape[1], ytr.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(ftr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        top = head(fva).topk(2, dim=1).indices
    return yva.gather(1, top).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("data/demo"), help="output of `coattn synth`")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the random HTS-AT")
    args = ap.parse_args()
    meta = json.loads((args.root / "synth_metadata.json").read_text())
    types = sorted({e["type"] for v in meta.values() for e in v["events"]})
    xtr, ytr = load(args.root, "development", meta, types)
    xva, yva = load(args.root, "validation", meta, types)
    print(f"{len(xtr)} training / {len(xva)} validation clips, {len(types)} event types; "
          f"chance top-2 precision {yva.mean().item():.2f}")
    for name, cfg in SETTINGS.items():
        enc = None
        if cfg is not None:
            cfg = dict(cfg)
            train = cfg.pop("train")
            torch.manual_seed(args.seed)
            enc = ClapAudioEncoder("HTSAT-mini", **cfg)
        torch.manual_seed(args.seed)
        train = cfg is not None and train
        precision = probe(features(enc, xtr, train), ytr, features(enc, xva, train), yva)
        print(f"{precision:5.3f}  {name}", flush=True)


if __name__ == "__main__":
    main()
