"""Small dataset trees in the real formats (Clotho, AudioCaps, WavCaps; coattn's and aac-datasets' layouts).

File formats as released (read at the sources named in docs/data.md): Clotho caption CSVs
``file_name,caption_1..caption_5`` and metadata CSVs ``file_name,keywords,sound_id,sound_link,
start_end_samples,manufacturer,license``; AudioCaps ``audiocap_id,youtube_id,start_time,caption`` (one row per
caption); WavCaps per-source JSON ``{"num_captions_per_audio": 1, "data": [...]}`` with each source's fields.
Audio is 0.5 s of seeded noise + a tone (content does not matter to these tests, only that it decodes).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

CLOTHO_FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}


def write_audio(path: Path, seed: int, sr: int = 16000, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.2 * np.sin(2 * np.pi * (200 + 40 * (seed % 20)) * t) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, x.astype(np.float32), sr, format="FLAC" if path.suffix == ".flac" else "WAV")


def make_clotho(root: Path, sizes: dict[str, int] | None = None, layout: str = "default",
                first_sound_id: dict[str, int] | None = None) -> dict[str, list[tuple[str, int]]]:
    """Clotho v2.1 (``default``: root/<folder>/, root/clotho_*.csv; ``aac-datasets``: root/CLOTHO_v2.1/...).
    Returns split -> [(file name, freesound sound id)]."""
    sizes = sizes or {"train": 6, "val": 3, "test": 3}
    first = first_sound_id or {"train": 1000, "val": 2000, "test": 3000}
    base = root / "CLOTHO_v2.1" if layout == "aac-datasets" else root
    csv_dir = base / "clotho_csv_files" if layout == "aac-datasets" else base
    audio_dir = base / "clotho_audio_files" if layout == "aac-datasets" else base
    csv_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in sizes.items():
        folder = CLOTHO_FOLDERS[split]
        clips = [(f"{folder} take, {i} birds.wav", first[split] + i) for i in range(n)]  # spaces and commas, as real
        with open(csv_dir / f"clotho_captions_{folder}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
            for i, (name, _) in enumerate(clips):
                w.writerow([name, *(f"clotho {folder} clip {i} caption {k}" for k in range(1, 6))])
        with open(csv_dir / f"clotho_metadata_{folder}.csv", "w", newline="", encoding="iso-8859-1") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                        "license"])
            for name, sid in clips:
                w.writerow([name, "birds;field", sid, f"https://freesound.org/people/x/sounds/{sid}", "[0, 661500]",
                            "x", "http://creativecommons.org/licenses/by/3.0/"])
        for i, (name, sid) in enumerate(clips):
            write_audio(audio_dir / folder / name, sid)
        out[split] = clips
    return out


def make_audiocaps(root: Path, sizes: dict[str, int] | None = None, layout: str = "default",
                   prefix: str = "ac") -> dict[str, list[str]]:
    """AudioCaps v1 (``default``: root/<split>.csv + root/audio/<split>/<ytid>.wav; ``aac-datasets``:
    root/AUDIOCAPS/csv_files_v1/<split>.csv + root/AUDIOCAPS/audio_32000Hz/<split>/<ytid>_<start>.flac).
    Returns split -> youtube ids (11 characters, as YouTube's)."""
    sizes = sizes or {"train": 6, "val": 3, "test": 3}
    base = root / "AUDIOCAPS" if layout == "aac-datasets" else root
    csv_dir = base / "csv_files_v1" if layout == "aac-datasets" else base
    csv_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in sizes.items():
        ids = [f"{prefix}{split[:2]}{i:07d}"[:11].ljust(11, "x") for i in range(n)]
        with open(csv_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
            for i, yid in enumerate(ids):
                for k in range(1 if split == "train" else 5):  # 1 caption per training clip, 5 in val / test
                    w.writerow([f"{9000 + 10 * i + k}", yid, 30, f"audiocaps {split} clip {i} caption {k}"])
        for i, yid in enumerate(ids):
            path = (base / "audio_32000Hz" / split / f"{yid}_30.flac" if layout == "aac-datasets"
                    else base / "audio" / split / f"{yid}.wav")
            write_audio(path, 500 + i + 50 * len(split), sr=32000)
        out[split] = ids
    return out


def wavcaps_entry(source: str, wid: str, caption: str) -> dict:
    """One entry with the fields of its source (sb_final.json as released; the others as aac-datasets
    v0.7.0 documents them: AudioSet_SL id/caption/duration, BBC + description/download_link, FreeSound + tags...)."""
    entry = {"id": wid, "caption": caption, "duration": 0.5, "audio": "wav_path"}
    if source in ("FreeSound", "SoundBible"):
        entry.update(author="someone", href=f"{wid}-sound.html")
    if source != "AudioSet_SL":
        entry.update(description=f"original description of {wid}", download_link=f"https://example.org/{wid}")
    if source == "FreeSound":
        entry.update(tags=["field-recording"], title=f"sound {wid}")
    return entry


def make_wavcaps(root: Path, ids: dict[str, list[str]], layout: str = "default") -> Path:
    """WavCaps: json_files/<Source>/<x>_final.json and Audio/<Source>/<name>.flac, under root
    (``default``) or root/WavCaps (``aac-datasets``). Returns the WavCaps folder."""
    files = {"AudioSet_SL": "as_final.json", "BBC_Sound_Effects": "bbc_final.json", "FreeSound": "fsd_final.json",
             "SoundBible": "sb_final.json"}
    folder = root / "WavCaps" if layout == "aac-datasets" else root
    for source, wids in ids.items():
        data = [wavcaps_entry(source, w, f"wavcaps {source} sound {w}") for w in wids]
        path = folder / "json_files" / source / files[source]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"num_captions_per_audio": 1, "data": data}), encoding="utf-8")
        for i, w in enumerate(wids):
            name = w[:-4] if w.endswith(".wav") else w
            write_audio(folder / "Audio" / source / f"{name}.flac", 700 + i, sr=32000)
    return folder
