"""Where each dataset keeps its files: coattn's documented layouts and the aac-datasets library's.

    coattn fit --config experiments/clotho_iterating.yaml --data.init_args.root=/data/aac   # detected

Researchers who downloaded Clotho, AudioCaps or WavCaps with ``aac-datasets`` (v0.7.0,
``Labbeti/aac-datasets`` tag v0.7.0 = 631524fb, ``src/aac_datasets/datasets/functional/*.py``) point
``root`` at that library's root and load without converting anything. ``layout: auto`` (the default)
looks for the aac-datasets folder names; ``default`` / ``aac-datasets`` force one. The layouts
(docs/data.md shows the trees):

    aac-datasets root/                      coattn default (root = the dataset folder)
      CLOTHO_v2.1/clotho_csv_files/*.csv      root/clotho_captions_*.csv
      CLOTHO_v2.1/clotho_audio_files/<folder>/ root/<development|validation|evaluation>/
      AUDIOCAPS/csv_files_v1/<split>.csv      root/<split>.csv   (aac v1 also: AUDIOCAPS/<split>.csv)
      AUDIOCAPS/audio_32000Hz/<split>/<ytid>_<start_time>.flac   root/audio/<split>/
      WavCaps/json_files/<Source>/*_final.json   root/json_files/<Source>/*_final.json (the HF snapshot)
      WavCaps/Audio/<Source>/<id>.flac        root/Audio/<Source>/<id>.flac

Kept apart from the data modules because the three share the detection rule and its error message.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from coattn.errors import ConfigError

log = logging.getLogger("coattn.data")

Layout = Literal["auto", "default", "aac-datasets"]
CLOTHO_VERSIONS = ("v2.1", "v2", "v1")  # aac-datasets' CLOTHO_<version> folders, newest first
AUDIOCAPS_TEMPLATE = "{youtube_id}_{start_time}.flac"  # aac-datasets' _AUDIO_FNAME_FORMAT with flac (its default)
AUDIOCAPS_RATE = 32000  # aac-datasets' default sr: audio_32000Hz


def _check(layout: str) -> None:
    if layout not in ("auto", "default", "aac-datasets"):
        raise ConfigError(f"data layout {layout!r}: use auto, default or aac-datasets")


def _aac_clotho_dir(root: Path) -> Path | None:
    """``root/CLOTHO_<version>`` (newest version present), or root itself when it is such a folder."""
    if (root / "clotho_csv_files").is_dir():
        return root
    return next((root / f"CLOTHO_{v}" for v in CLOTHO_VERSIONS if (root / f"CLOTHO_{v}").is_dir()), None)


def clotho_layout(root: Path, layout: str = "auto") -> tuple[str, Path, Path]:
    """(layout used, folder of the caption CSVs, folder holding development/ validation/ evaluation/)."""
    _check(layout)
    base = _aac_clotho_dir(root) if layout != "default" else None
    if base is None:
        if layout == "aac-datasets":
            raise ConfigError(f"data layout aac-datasets: no {root}/CLOTHO_<version>/clotho_csv_files (versions "
                              f"{', '.join(CLOTHO_VERSIONS)}); point root at the aac-datasets root")
        return "default", root, root
    return "aac-datasets", base / "clotho_csv_files", base / "clotho_audio_files"


def audiocaps_layout(root: Path, layout: str = "auto") -> tuple[str, Path, Path]:
    """(layout used, folder of train/val/test.csv, folder holding the train/ val/ test/ audio folders)."""
    _check(layout)
    base = None
    if layout != "default":
        base = root if list(root.glob("audio_*Hz")) or (root / "csv_files_v1").is_dir() else root / "AUDIOCAPS"
        base = base if base.is_dir() else None
    if base is None:
        if layout == "aac-datasets":
            raise ConfigError(f"data layout aac-datasets: no {root}/AUDIOCAPS folder; point root at the aac-datasets "
                              "root")
        return "default", root, root / "audio"
    # aac-datasets v1 reads AUDIOCAPS/<split>.csv when present (backward compatibility), else csv_files_<version>
    csv_dir = base if (base / "train.csv").is_file() or (base / "test.csv").is_file() else next(
        (base / f"csv_files_{v}" for v in ("v1", "v2") if (base / f"csv_files_{v}").is_dir()), base / "csv_files_v1")
    rates = sorted(p.name for p in base.glob("audio_*Hz") if p.is_dir())
    audio = f"audio_{AUDIOCAPS_RATE}Hz" if f"audio_{AUDIOCAPS_RATE}Hz" in rates or not rates else rates[0]
    if len(rates) > 1:
        log.info("AudioCaps (aac-datasets): %s found; reading %s (set the *_audio_dir options to choose)", rates, audio)
    return "aac-datasets", csv_dir, base / audio


def wavcaps_layout(root: Path, layout: str = "auto") -> tuple[str, Path]:
    """(layout used, the WavCaps folder: json_files/, Audio/, blacklists)."""
    _check(layout)
    if layout != "default" and (root / "WavCaps").is_dir():
        return "aac-datasets", root / "WavCaps"
    if layout == "aac-datasets":
        raise ConfigError(f"data layout aac-datasets: no {root}/WavCaps folder; point root at the aac-datasets root")
    return "default", root
