"""A tiny real sound bank in the sounds.csv format of the bank contract (docs/moments.md), made
from a few Tux Paint recordings (the cached Debian package), and the Lighthouse-layout set built on it."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import soundfile as sf

STAMPS = "usr/share/tuxpaint/stamps"
PICKS = ("animals/mammals/dogs/dog", "animals/mammals/dogs/fox", "animals/mammals/pig", "animals/mammals/equines/horse",
         "animals/insects/bee", "animals/amphibians/frog")
COLUMNS = ("id", "file", "label", "phrase", "description", "category", "seconds", "sample_rate", "source")


def make_bank(out: Path) -> Path:
    """BANK/sounds.csv + BANK/audio/*.wav (mono 16-bit 44.1 kHz) from six real recordings."""
    from coattn.tools.sounds import extract_deb
    from tests.conftest import require_tuxpaint

    raw = extract_deb(require_tuxpaint(), out / "deb", log=lambda m: None)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for pick in PICKS:
        src = raw / STAMPS / pick
        x, sr = sf.read(f"{src}.ogg", dtype="float32", always_2d=True)
        name = Path(pick).name
        desc = (src.with_suffix(".txt")).read_text(encoding="utf-8").splitlines()[0].strip()
        sid = pick.replace("/", "-")
        sf.write(out / "audio" / f"{sid}.wav", x.mean(1), sr, subtype="PCM_16")
        rows.append({"id": sid, "file": f"audio/{sid}.wav", "label": name, "phrase": desc.rstrip(".").lower(),
                     "description": desc, "category": str(Path(pick).parent), "seconds": f"{len(x) / sr:.3f}",
                     "sample_rate": sr, "source": "tuxpaint"})
    with open(out / "sounds.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    shutil.rmtree(raw)
    return out
