"""``AudioCapsDataModule``: AudioCaps v1 / 2.0 caption files plus your own copy of the audio.

Expected layout (every path is an option; relative paths are under ``root``):

    root/train.csv  root/val.csv  root/test.csv       audiocap_id,youtube_id,start_time,caption
    root/audio/train/  root/audio/val/  root/audio/test/   one 10 s clip per (youtube_id, start_time)

AudioCaps ships captions only; the audio comes from YouTube, and deleted videos mean part of
it is always missing (typically 5-10 %). Missing clips are counted, written to
``missing_<split>.txt`` and skipped: never fatal. One row per caption: train has 1 caption
per clip (49,838 clips in v1), val and test 5 (495 and 975 clips), grouped here by
(youtube_id, start_time) so evaluation sees each clip once with its 5 captions.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

from coattn.errors import ConfigError, DataError, DataNotFoundError
from data_modules.base import AudioCaptionDataModule
from data_modules.splits import SplitSource, read_csv_rows

COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
TEMPLATE_FIELDS = {"audiocap_id", "youtube_id", "start_time", "start", "end"}


def check_template(template: str) -> None:
    """Fail at construction, not mid-setup, on a template naming an unknown field."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    unknown = {f.split(".")[0].split("[")[0] for f in fields} - TEMPLATE_FIELDS
    if unknown or not fields:
        raise ConfigError(f"file_template {template!r}: unknown field(s) {sorted(unknown)}; use "
                         f"{sorted(TEMPLATE_FIELDS)} (start/end are floats, e.g. '{{youtube_id}}_{{start:.3f}}.wav')")


def template_name(template: str, row: dict[str, str]) -> str:
    start = float(row["start_time"])
    return template.format(audiocap_id=row["audiocap_id"], youtube_id=row["youtube_id"],
                           start_time=row["start_time"], start=start, end=start + 10.0)


class _FolderIndex:
    """The names in one audio folder, listed once (a 50k-clip folder: one scandir, not 150k stats)."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            self.names = {e.name for e in os.scandir(folder)}
        except FileNotFoundError:
            self.names = set()

    def find(self, name: str, extensions: tuple[str, ...]) -> str | None:
        """``name`` if present, else the same stem with the first extension that exists."""
        stem, ext = os.path.splitext(name)
        candidates = [name] + [stem + e for e in extensions if e != ext]
        for c in candidates:
            if ("/" in c and (self.folder / c).is_file()) or c in self.names:
                return c
        return None


class AudioCapsDataModule(AudioCaptionDataModule):
    """AudioCaps from ``root``.

    Args:
        root: dataset folder (layout in the module docstring).
        train_csv, val_csv, test_csv: caption files (v1 or 2.0; same columns).
        train_audio_dir, val_audio_dir, test_audio_dir: audio folders.
        file_template: file name of a clip, from the fields audiocap_id, youtube_id, start_time (as
            in the csv), start, end (floats): "{youtube_id}.wav", "Y{youtube_id}.wav",
            "{youtube_id}_{start_time}.wav", "{audiocap_id}.flac", "{youtube_id}_{start:.3f}.wav"...
        extensions: tried in order when the templated name is absent (same stem, other extension).
        **kwargs: the shared options of ``AudioCaptionDataModule``.
    """

    def __init__(self, root: str, train_csv: str = "train.csv", val_csv: str = "val.csv",
                 test_csv: str = "test.csv", train_audio_dir: str = "audio/train", val_audio_dir: str = "audio/val",
                 test_audio_dir: str = "audio/test", file_template: str = "{youtube_id}.wav",
                 extensions: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        check_template(file_template)
        self.root = Path(root)
        self.csvs = {"train": self._under_root(train_csv), "val": self._under_root(val_csv),
                     "test": self._under_root(test_csv)}
        self.audio_dirs = {"train": self._under_root(train_audio_dir), "val": self._under_root(val_audio_dir),
                           "test": self._under_root(test_audio_dir)}
        self.file_template = file_template
        exts = extensions if extensions is not None else [".wav", ".flac", ".ogg"]
        self.extensions = tuple(e if e.startswith(".") else "." + e for e in exts)

    def _under_root(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    def split_source(self, name: str) -> SplitSource:
        path = self.csvs[name]
        if not path.is_file():
            raise DataNotFoundError(f"AudioCaps {name} caption file {path} not found; set root or {name}_csv")
        rows = read_csv_rows(path, COLUMNS)
        index = _FolderIndex(self.audio_dirs[name])
        # Group captions by clip: (youtube_id, start_time) identifies 10 s of a video. The file is
        # the first templated name found among the clip's rows ({audiocap_id} differs per row).
        clip_file: dict[tuple[str, str], str] = {}
        clip_found: dict[tuple[str, str], bool] = {}
        out: list[tuple[str, list[str], int]] = []
        for line, row in rows:
            try:
                key = (row["youtube_id"], str(float(row["start_time"])))
                wanted = template_name(self.file_template, row)
            except ValueError:
                raise DataError(f"{path}: row ending at line {line} has start_time {row['start_time']!r}, "
                                 "not a number") from None
            found = index.find(wanted, self.extensions)
            if key not in clip_file or (found and not clip_found[key]):
                clip_file[key], clip_found[key] = found or wanted, found is not None
            out.append((key, row["caption"], line))
        return SplitSource(name, self.audio_dirs[name], path,
                           [(clip_file[key], [caption], line) for key, caption, line in out])
