"""``AudioCapsDataModule``: AudioCaps v1 / 2.0 caption files plus your own copy of the audio.

Expected layout (every path is an option; relative paths are under ``root``):

    root/train.csv  root/val.csv  root/test.csv       audiocap_id,youtube_id,start_time,caption
    root/audio/train/  root/audio/val/  root/audio/test/   one 10 s clip per (youtube_id, start_time)

or aac-datasets' ``root/AUDIOCAPS/{csv_files_v1/<split>.csv, audio_32000Hz/<split>/<ytid>_<start>.flac}``
(``layout``, data_modules/layouts.py). Each clip's identity key is ``audioset:<youtube_id>`` (an
AudioSet segment: WavCaps' AudioSet_SL part names the same recordings ``Y<youtube_id>.wav``).

AudioCaps ships captions only; the audio comes from YouTube, and deleted videos mean part of
it is always missing (typically 5-10 %). Missing clips are counted, written to
``missing_<split>.txt`` and skipped: never fatal. One row per caption: train has 1 caption
per clip (49,838 clips in v1), val and test 5 (495 and 975 clips), grouped here by
(youtube_id, start_time) so evaluation sees each clip once with its 5 captions.
"""
from __future__ import annotations

import string
from pathlib import Path

from coattn.errors import ConfigError, DataError, DataNotFoundError
from data_modules.base import AudioCaptionDataModule
from data_modules.layouts import AUDIOCAPS_TEMPLATE, Layout, audiocaps_layout
from data_modules.splits import FolderIndex, SplitSource, read_csv_rows

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


class AudioCapsDataModule(AudioCaptionDataModule):
    """AudioCaps from ``root``.

    Args:
        root: dataset folder (layout in the module docstring).
        train_csv, val_csv, test_csv: caption files (v1 or 2.0; same columns).
        train_audio_dir, val_audio_dir, test_audio_dir: audio folders.
        file_template: file name of a clip, from the fields audiocap_id, youtube_id, start_time (as
            in the csv), start, end (floats): "{youtube_id}.wav", "Y{youtube_id}.wav",
            "{youtube_id}_{start_time}.wav", "{audiocap_id}.flac", "{youtube_id}_{start:.3f}.wav"...
            Default: "{youtube_id}.wav", or aac-datasets' "{youtube_id}_{start_time}.flac" in that layout.
        extensions: tried in order when the templated name is absent (same stem, other extension).
        layout: ``auto`` (aac-datasets' ``AUDIOCAPS`` folder when present, else the layout above),
            ``default`` or ``aac-datasets``; in the aac-datasets layout the paths above are under
            ``AUDIOCAPS/`` (csv_files_v1/ or the v1 csvs directly, audio_32000Hz/).
        **kwargs: the shared options of ``AudioCaptionDataModule``.
    """

    def __init__(self, root: str, train_csv: str | None = None, val_csv: str | None = None,
                 test_csv: str | None = None, train_audio_dir: str | None = None, val_audio_dir: str | None = None,
                 test_audio_dir: str | None = None, file_template: str | None = None,
                 extensions: list[str] | None = None, layout: Layout = "auto", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.layout, csv_dir, audio_root = audiocaps_layout(self.root, layout)
        file_template = file_template or (AUDIOCAPS_TEMPLATE if self.layout == "aac-datasets" else "{youtube_id}.wav")
        check_template(file_template)
        csvs, audio = {"train": train_csv, "val": val_csv, "test": test_csv}, \
            {"train": train_audio_dir, "val": val_audio_dir, "test": test_audio_dir}
        self.csvs = {k: self._under_root(v) if v else csv_dir / f"{k}.csv" for k, v in csvs.items()}
        self.audio_dirs = {k: self._under_root(v) if v else audio_root / k for k, v in audio.items()}
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
        index = FolderIndex(self.audio_dirs[name])
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
                           [(clip_file[key], [caption], line) for key, caption, line in out],
                           {f: f"audioset:{key[0]}" for key, f in clip_file.items()})
