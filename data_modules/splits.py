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

from coattn.errors import DataError

log = logging.getLogger("coattn.data")


def _raise_if_run_on(path: Path, lines: list[str], first: int, last: int, n_columns: int) -> None:
    """A row spanning physical lines ``first..last`` that swallowed a line which is a whole row by itself.

    That is what an unterminated quote does: the csv module keeps reading the quoted field across
    newlines until the next quote character, so the following rows vanish into one caption. A
    legitimate multi-line caption does not hold a line of ``n_columns`` comma-separated fields.
    """
    for k in range(first + 1, last + 1):
        fields = next(csv.reader([lines[k - 1]]), [])
        if len(fields) >= n_columns and fields[0].strip():
            swallowed = lines[k - 1].rstrip()[:60]
            raise DataError(f"{path}: the row starting at line {first} runs on to line {last}: an unterminated quote "
                            f"(\") in it swallows line {k} ({swallowed!r}), which is a row of its own. Close the quote "
                            "(or double a quote inside a quoted caption: \"\")")


def read_csv_rows(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """All rows of a UTF-8 CSV as (line number, row) with the ``required`` columns present.

    Raises ``DataError`` naming the file and row for a bad encoding, a missing column, a short row,
    a field over the csv module's limit, or a row that swallowed the following ones (an unterminated
    quote), so a broken file is fixed at once instead of surfacing as a KeyError mid-epoch or a
    clip silently missing from the split.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the BOM spreadsheet exports add
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}: row {line} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                        f"re-export the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    lines = io.StringIO(text, newline="").readlines()  # the physical lines csv counts in line_num
    rows = []
    end = 0
    try:
        header = reader.fieldnames or []
        end = reader.line_num
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: row 1 (header) lacks column(s) {missing}; found {header}")
        for row in reader:
            # line_num counts physical lines, so quoted newlines inside captions still point right.
            start, end = end + 1, reader.line_num
            if end > start:
                _raise_if_run_on(path, lines, start, end, len(header))
            if any(row.get(c) is None for c in required):
                raise DataError(f"{path}: row ending at line {end} has fewer fields than the header "
                                f"(missing {[c for c in required if row.get(c) is None]})")
            rows.append((end, row))
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (131,072 characters)
        raise DataError(f"{path}: row starting at line {end + 1}: {exc}. A field that long is almost always an "
                        "unterminated quote (\") that swallowed the rest of the file; fix that row") from None
    return rows


class UnsafePathError(ValueError):
    """A file name in a caption file that would read outside the audio folder; ``rule`` says which rule
    refused it: ``empty``, ``absolute``, ``dotdot`` or ``symlink`` (a link to a file outside the folder)."""

    def __init__(self, message: str, rule: str):
        super().__init__(message)
        self.rule = rule


RULES = {"empty": "empty or NUL-containing names", "absolute": "absolute names", "dotdot": "names with '..'",
         "symlink": "symlinks to files outside the audio folder"}


def resolve_in_root(root: str | Path, name: str, root_resolved: Path | None = None,
                    follow_symlinks: bool = False) -> Path:
    """``root/name``, refusing names that escape ``root``: absolute, ``..``, or a symlink out.

    ``root_resolved`` (``Path(root).resolve()``) saves one resolve per file on 50k-clip splits.
    ``follow_symlinks``: accept symlinks whose target lies outside ``root`` (a dataset made of
    per-file links into a shared pool); the name itself must still be relative and free of ``..``.
    A folder that is itself a link (``root`` or a sub-folder pointing elsewhere) is resolved first,
    so linked folders work either way.
    """
    if not name or "\x00" in name:
        raise UnsafePathError(f"empty or NUL-containing file name {name!r}", "empty")
    if os.path.isabs(name) or Path(name).drive:
        raise UnsafePathError(f"absolute file name {name!r} (must be relative to {root})", "absolute")
    if ".." in Path(name).parts:
        raise UnsafePathError(f"file name {name!r} contains '..'", "dotdot")
    path = Path(root) / name
    if follow_symlinks:
        return path
    target = path.resolve()  # follows symlinks in the file and in any sub-folder of root
    if not target.is_relative_to(root_resolved or Path(root).resolve()):
        raise UnsafePathError(f"file {name!r} is a symlink to {target}, outside {root}", "symlink")
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
    why_rejected: dict[str, UnsafePathError] = field(default_factory=dict)  # file name -> the refusal

    def __len__(self) -> int:
        return len(self.fnames)


def make_split(source: SplitSource, exclude: set[str] | frozenset[str] = frozenset(),
               exclude_keys: set[str] | frozenset[str] = frozenset(), follow_symlinks: bool = False) -> Split:
    """Keep the clips whose audio exists, is safe and is not excluded; the rest is listed, never fatal.

    Empty captions are dropped; a clip left without captions is dropped too. A row repeated
    verbatim (same file, same captions) is read once. Both are counted in one warning.
    ``exclude`` holds file names (e.g. the unreadable clips ``coattn data-check`` found) to leave out up front;
    ``exclude_keys`` identity keys (``source.keys``: WavCaps blacklists, evaluation overlap), also listed as excluded.
    ``follow_symlinks``: see ``resolve_in_root``.
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
            path = resolve_in_root(audio_dir, fname, root_resolved, follow_symlinks)
        except UnsafePathError as exc:
            split.rejected.append(fname)
            split.why_rejected[fname] = exc
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


def describe_rejections(why: dict[str, UnsafePathError]) -> str:
    """The rejected names grouped by the rule that refused them, with an example each and, for
    symlinks, the option that accepts them: ``3 symlinks to files outside the audio folder (e.g. ...)``."""
    by_rule: dict[str, list[UnsafePathError]] = {}
    for exc in why.values():
        by_rule.setdefault(exc.rule, []).append(exc)
    parts = []
    for rule, excs in by_rule.items():
        hint = ("; if you trust these links, set data.init_args.follow_symlinks=true (names must still be relative, "
                "without '..')") if rule == "symlink" else ""
        parts.append(f"{len(excs)} {RULES[rule]} (e.g. {excs[0]}){hint}")
    return "; ".join(parts)


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by ``name`` alone: for carving subsets that survive added rows."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64
