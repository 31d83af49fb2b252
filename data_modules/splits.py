"""Caption files to ``Split``s: CSV reading, path safety, missing and excluded clips.

Kept apart from the datasets and the LightningDataModule because ``coattn data-check``,
``coattn augment`` and the Clotho and AudioCaps modules need these pieces without a loader:
reading a caption file with errors that name the row, refusing file names that escape the audio
folder, and deciding which listed clips a split keeps (never fatal: the rest is listed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger("coattn.data")


def read_csv_rows(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """All rows of a UTF-8 CSV as (line number, row) with the ``required`` columns present.

    Raises ValueError naming the file and row for a bad encoding, a missing column or a short row,
    so a broken download is fixed at once instead of surfacing as a KeyError mid-epoch.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the BOM spreadsheet exports add
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}: row {line} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                         f"re-export the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: row 1 (header) lacks column(s) {missing}; found {header}")
    rows = []
    for row in reader:
        # line_num counts physical lines, so quoted newlines inside captions still point right.
        if any(row.get(c) is None for c in required):
            raise ValueError(f"{path}: row ending at line {reader.line_num} has fewer fields than the header "
                             f"(missing {[c for c in required if row.get(c) is None]})")
        rows.append((reader.line_num, row))
    return rows


class UnsafePathError(ValueError):
    """A file name in a caption file that would read outside the audio folder."""


def resolve_in_root(root: str | Path, name: str, root_resolved: Path | None = None) -> Path:
    """``root/name``, refusing names that escape ``root``: absolute, ``..``, or a symlink out.

    ``root_resolved`` (``Path(root).resolve()``) saves one resolve per file on 50k-clip splits.
    """
    if not name or "\x00" in name:
        raise UnsafePathError(f"empty or NUL-containing file name {name!r}")
    if os.path.isabs(name) or Path(name).drive:
        raise UnsafePathError(f"absolute file name {name!r} (must be relative to {root})")
    if ".." in Path(name).parts:
        raise UnsafePathError(f"file name {name!r} contains '..'")
    path = Path(root) / name
    target = path.resolve()  # follows symlinks in the file and in any sub-folder of root
    if not target.is_relative_to(root_resolved or Path(root).resolve()):
        raise UnsafePathError(f"file {name!r} is a symlink to {target}, outside {root}")
    return path


class FolderIndex:
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


@dataclass
class SplitSource:
    """What a caption file says about a split, before any file is looked at.

    rows: (file name relative to ``audio_dir``, captions of that row, line in ``csv``).
    Rows naming the same file are merged into one clip (AudioCaps: one row per caption).
    keys: file name -> the recording's identity across datasets (``audioset:<youtube id>``,
    ``freesound:<sound id>``...), where the files say it; ``MultiDataModule`` gives clips sharing a
    key one clip id, and ``exclude_keys`` / WavCaps blacklists leave keys out.
    """

    name: str
    audio_dir: Path
    csv: Path
    rows: list[tuple[str, list[str], int]]
    keys: dict[str, str] = field(default_factory=dict)


@dataclass
class Split:
    """One split: clips in ``clip_index`` order with their captions (nothing loaded)."""

    name: str
    audio_dir: Path
    fnames: list[str]
    paths: list[Path]
    captions: list[list[str]]
    missing: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # fname -> identity key (SplitSource.keys)

    def __len__(self) -> int:
        return len(self.fnames)


def make_split(source: SplitSource, exclude: set[str] | frozenset[str] = frozenset(),
               exclude_keys: set[str] | frozenset[str] = frozenset()) -> Split:
    """Keep the clips whose audio exists, is safe and is not excluded; the rest is listed, never fatal.

    Empty captions are dropped; a clip left without captions is dropped too. A row repeated
    verbatim (same file, same captions) is read once. Both are counted in one warning.
    ``exclude`` holds file names (e.g. the unreadable clips ``coattn data-check`` found) to leave out up front;
    ``exclude_keys`` identity keys (``source.keys``: WavCaps blacklists, evaluation overlap), also listed as excluded.
    """
    audio_dir = source.audio_dir
    order: list[str] = []
    caps: dict[str, list[str]] = {}
    seen_rows: set[tuple[str, tuple[str, ...]]] = set()
    n_dup_rows = n_empty = 0
    for fname, captions, _ in source.rows:
        key = (fname, tuple(captions))
        if key in seen_rows:
            n_dup_rows += 1
            continue
        seen_rows.add(key)
        if fname not in caps:
            order.append(fname)
            caps[fname] = []
        caps[fname].extend(c.strip() for c in captions if c and c.strip())
        n_empty += sum(1 for c in captions if not (c and c.strip()))
    no_caption = [f for f in order if not caps[f]]
    if n_dup_rows or n_empty:
        log.warning("%s split: %s: %d duplicated rows read once, %d empty captions dropped, %d clips left without "
                    "captions%s", source.name, source.csv, n_dup_rows, n_empty, len(no_caption),
                    f" (skipped, e.g. {no_caption[:3]})" if no_caption else "")
    split = Split(source.name, audio_dir, [], [], [])
    keys = source.keys
    root_resolved = audio_dir.resolve()
    for fname in order:
        try:
            path = resolve_in_root(audio_dir, fname, root_resolved)
        except UnsafePathError as exc:
            split.rejected.append(fname)
            log.error("%s split: rejected a row of %s: %s", source.name, source.csv, exc)
            continue
        if fname in exclude or keys.get(fname) in exclude_keys:
            split.excluded.append(fname)
        elif not path.is_file():
            split.missing.append(fname)
        elif caps[fname]:
            split.fnames.append(fname)
            split.paths.append(path)
            split.captions.append(caps[fname])
            if fname in keys:
                split.keys[fname] = keys[fname]
    return split


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by ``name`` alone: for carving subsets that survive added rows."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64
