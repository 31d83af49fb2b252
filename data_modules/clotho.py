"""``ClothoDataModule``: Clotho v2.1 (and v1) from a root folder.

Expected layout (v2.1; v1 has no validation files, see ``val_size``):

    root/development/*.wav      root/clotho_captions_development.csv
    root/validation/*.wav       root/clotho_captions_validation.csv
    root/evaluation/*.wav       root/clotho_captions_evaluation.csv

or aac-datasets' ``root/CLOTHO_v2.1/{clotho_csv_files,clotho_audio_files/<folder>}`` (``layout``,
data_modules/layouts.py). Caption files: ``file_name,caption_1,...,caption_5``. Stages: fit =
development (train) + validation (val); validate = validation; test and predict = evaluation (the
split the retrieval literature reports on: 1,045 clips x 5 captions).

When ``clotho_metadata_<folder>.csv`` lies beside the captions (Clotho's release ships it:
``file_name,keywords,sound_id,...``), each clip's identity key is ``freesound:<sound_id>``, so
``MultiDataModule`` recognises the same Freesound recording in WavCaps' FreeSound part.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from coattn.errors import DataError, DataNotFoundError
from data_modules.base import AudioCaptionDataModule
from data_modules.layouts import Layout, clotho_layout
from data_modules.splits import SplitSource, read_csv_rows, stable_fraction

log = logging.getLogger("coattn.data")

CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, 6))
DEFAULT_FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}


def read_clotho_csv(path: str | Path) -> list[tuple[str, list[str], int]]:
    """(file_name, [caption_1..caption_5], line) per row; ValueError naming file/row on bad input."""
    return [(row["file_name"], [row[c] for c in CAPTION_COLUMNS], line)
            for line, row in read_csv_rows(path, ("file_name", *CAPTION_COLUMNS))]


def read_clotho_sound_ids(path: Path) -> dict[str, str]:
    """file_name -> ``freesound:<sound_id>`` from a Clotho metadata CSV ({} without the file or the column).

    The v2.1 metadata files are not all UTF-8 (aac-datasets reads them as ISO-8859-1): UTF-8 is
    tried first so that names match the caption files, then ISO-8859-1.
    """
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    rows = csv.DictReader(io.StringIO(text, newline=""))
    if not {"file_name", "sound_id"} <= set(rows.fieldnames or []):
        return {}
    return {r["file_name"]: f"freesound:{r['sound_id'].strip()}" for r in rows
            if r.get("file_name") and (r.get("sound_id") or "").strip().isdigit()}


class ClothoDataModule(AudioCaptionDataModule):
    """Clotho from ``root``; every path can be overridden (relative paths are under ``root``).

    Args:
        root: dataset folder (layout in the module docstring).
        train_csv, val_csv, test_csv: caption files (default ``clotho_captions_{folder}.csv``).
        train_audio_dir, val_audio_dir, test_audio_dir: audio folders (default development/,
            validation/, evaluation/).
        val_size: Clotho v1 (no validation csv): clips of development carved out as validation.
            Chosen by a hash of the file name, so the carve does not depend on ``seed`` and
            stays put when rows are added.
        layout: ``auto`` (aac-datasets' ``CLOTHO_<version>`` folder when present, else the layout
            above), ``default`` or ``aac-datasets`` (data_modules/layouts.py).
        **kwargs: the shared options of ``AudioCaptionDataModule`` (batch sizes, workers, crops...).
    """

    def __init__(self, root: str, train_csv: str | None = None, val_csv: str | None = None,
                 test_csv: str | None = None, train_audio_dir: str | None = None, val_audio_dir: str | None = None,
                 test_audio_dir: str | None = None, val_size: int = 200, layout: Layout = "auto", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        folders = DEFAULT_FOLDERS
        self.layout, csv_dir, audio_root = clotho_layout(self.root, layout)
        self.csvs = {k: self._under_root(v) if v else csv_dir / f"clotho_captions_{folders[k]}.csv"
                     for k, v in (("train", train_csv), ("val", val_csv), ("test", test_csv))}
        self.audio_dirs = {k: self._under_root(v) if v else audio_root / folders[k]
                           for k, v in (("train", train_audio_dir), ("val", val_audio_dir), ("test", test_audio_dir))}
        self.val_size = val_size
        self._explicit_val = val_csv is not None

    def _under_root(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    @property
    def carves_validation(self) -> bool:
        """True for the v1 layout: validation is carved out of development."""
        return not self._explicit_val and not self.csvs["val"].exists()

    def _rows(self, name: str) -> list[tuple[str, list[str], int]]:
        path = self.csvs[name]
        if not path.is_file():
            raise DataNotFoundError(f"Clotho {name} caption file {path} not found; set root or {name}_csv "
                                    f"(expected layout: {self.root}/clotho_captions_<split>.csv)")
        return read_clotho_csv(path)

    def split_source(self, name: str) -> SplitSource:
        if name in ("train", "val") and self.carves_validation:
            rows = self._rows("train")
            # The val_size clips with the smallest name hash: deterministic, independent of row order.
            names = sorted({r[0] for r in rows}, key=stable_fraction)
            val_names = set(names[:self.val_size])
            if len(names) <= self.val_size:  # the carve would leave nothing to train on
                raise DataError(f"no validation caption file {self.csvs['val']}: read as the Clotho v1 layout, "
                                f"validation would be val_size={self.val_size} clips carved out of the {len(names)} "
                                f"of {self.csvs['train']}, leaving none for training. Provide that file (or set "
                                "data.init_args.val_csv), or lower data.init_args.val_size")
            if name == "val":
                log.warning("no validation caption file %s: Clotho v1 layout, validation = %d clips carved from %s",
                            self.csvs["val"], len(val_names), self.csvs["train"])
            keep = [r for r in rows if (r[0] in val_names) == (name == "val")]
            return SplitSource(name, self.audio_dirs["train"], self.csvs["train"], keep, self._keys("train"))
        return SplitSource(name, self.audio_dirs[name], self.csvs[name], self._rows(name), self._keys(name))

    def _keys(self, name: str) -> dict[str, str]:
        """Freesound identity keys from the split's metadata file beside its captions (module docstring)."""
        captions = self.csvs[name]
        meta = captions.with_name(captions.name.replace("clotho_captions_", "clotho_metadata_"))
        return read_clotho_sound_ids(meta) if meta != captions else {}
