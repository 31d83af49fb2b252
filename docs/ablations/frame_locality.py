"""Do a trained audio tower's frames stay where their sound is? (docs/ablations.md, "Second pass")

    python docs/ablations/frame_locality.py runs/exp2/dual_s0/checkpoints/best.ckpt [--clips 24]

Rolls each evaluation clip's waveform by half its length (a clip "A then B" becomes "B then A", the
same sounds) and compares the audio tower's frames of both. If frames are local (frame t describes
the sound at time t), frame t of the rolled clip matches frame t - T/2 of the original; if every
frame describes the whole clip (HTS-AT's last stage attends over all of it), it matches frame t as
well. Frames are centred over all clips and frames first (their shared component is not content).
Also prints the within-clip cosine of the first and last quarter's mean frame (1 = no change in time).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from coattn.audio import load_clip
from coattn.model import CoAttnModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a coattn fit checkpoint (its audio tower is read)")
    p.add_argument("--audio-dir", default="data/demo/evaluation")
    p.add_argument("--clips", type=int, default=24)
    a = p.parse_args()
    model = CoAttnModel.from_checkpoint(a.ckpt)
    enc = model.audio_encoder
    files = sorted(Path(a.audio_dir).glob("*.wav"))[: a.clips]
    if not files:
        raise SystemExit(f"no .wav files in {a.audio_dir}")
    wave = torch.stack([load_clip(f, enc.sample_rate, enc.clip_samples) for f in files])
    rolled = torch.roll(wave, enc.clip_samples // 2, dims=1)
    with torch.no_grad():
        x, y = model.encode_audio(wave).states, model.encode_audio(rolled).states  # (N, T, D)
    mu = torch.cat([x, y]).mean((0, 1))
    x, y = F.normalize(x - mu, dim=-1), F.normalize(y - mu, dim=-1)
    half = x.shape[1] // 2
    same = (y * x).sum(-1).mean()
    moved = (y * torch.roll(x, half, dims=1)).sum(-1).mean()
    q = x.shape[1] // 4
    early_late = F.cosine_similarity(x[:, :q].mean(1), x[:, -q:].mean(1), dim=-1).mean()
    print(f"{len(files)} clips, {x.shape[1]} frames: cos(rolled frame t, original frame t) = {same:.3f}; "
          f"cos(rolled frame t, original frame t - {half}) = {moved:.3f}; "
          f"first vs last quarter of a clip: {early_late:.3f}")


if __name__ == "__main__":
    main()
