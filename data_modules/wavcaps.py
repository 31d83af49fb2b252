"""``WavCapsDataModule``: WavCaps (Mei et al., 2023) from its public release, for training.

    coattn fit --config experiments/multi/clotho_audiocaps_wavcaps_iterating.yaml

Release layout (Hugging Face ``cvssp/WavCaps``, read at ``XinhaoMei/WavCaps`` a5a9649c and
aac-datasets v0.7.0; aac-datasets' copy is the same under ``<aac root>/WavCaps/``, see layouts.py):

    root/json_files/AudioSet_SL/as_final.json         108,317 clips  id "Y<youtube id>.wav"
    root/json_files/BBC_Sound_Effects/bbc_final.json   31,201        id = BBC sound id
    root/json_files/FreeSound/fsd_final.json          262,300        id = Freesound sound id
    root/json_files/SoundBible/sb_final.json            1,232        id = SoundBible id
    root/Audio/<Source>/<id>.flac   (AudioSet_SL: <id without .wav>.flac), 32 kHz FLAC from Zip_files/

Each JSON file is ``{"num_captions_per_audio": 1, "data": [{"id": ..., "caption": ..., "duration":
..., <source-specific fields>}, ...]}``; ``id`` and ``caption`` are required, the rest is not read.

WavCaps publishes no evaluation split (``EVAL_SPLITS`` is empty): train on it next to Clotho and
AudioCaps with ``MultiDataModule`` and validate on theirs. Its FreeSound and AudioSet parts contain
clips of those evaluation splits, which must not be trained on; ``blacklist_files`` takes the
release's lists (``json_files/blacklist/blacklist_exclude_*.json``: ``{"AudioSet": ["Y<ytid>.wav"...],
"FreeSound": ["<sound id>"...]}``), aac-datasets' CSVs (``index,id``) and the DCASE 2025 baseline's
``dcase2025_task6_excluded_freesound_ids.csv`` (``sound_id``). They are turned into identity keys
(``audioset:<ytid>``, ``freesound:<id>``) and left out through the data modules' exclusion
mechanism (``Split.excluded``, counted in the split's log line), exactly where WavCaps' own loader
applies them: FreeSound entries to the FreeSound part, AudioSet entries to AudioSet_SL.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from coattn.errors import ConfigError, DataError
from data_modules.base import AudioCaptionDataModule
from data_modules.layouts import Layout, wavcaps_layout
from data_modules.splits import FolderIndex, SplitSource, stable_fraction

log = logging.getLogger("coattn.data")

# source -> (JSON file under json_files/<source>/, identity namespace)
SOURCES = {"AudioSet_SL": ("as_final.json", "audioset"), "BBC_Sound_Effects": ("bbc_final.json", "bbc"),
           "FreeSound": ("fsd_final.json", "freesound"), "SoundBible": ("sb_final.json", "soundbible")}
# blacklist JSON key -> the source it applies to (WavCaps' retrieval/data_handling/pretrain_dataset.py)
BLACKLIST_KEYS = {"AudioSet": "audioset", "FreeSound": "freesound"}


def identity_key(source: str, wavcaps_id: str) -> str:
    """``audioset:<ytid>`` for AudioSet_SL's ``Y<ytid>.wav`` (PANNs names: one 'Y' prepended), else
    ``<namespace>:<id>``: the key AudioCaps / Clotho (with metadata) give the same recording."""
    ns = SOURCES[source][1]
    if ns == "audioset":
        stem = wavcaps_id[:-4] if wavcaps_id.endswith(".wav") else wavcaps_id
        return f"audioset:{stem[1:] if stem.startswith('Y') else stem}"
    return f"{ns}:{wavcaps_id}"


def audio_name(source: str, wavcaps_id: str) -> str:
    """File of an entry relative to the audio folder (aac-datasets' names: ``id.replace('.wav', '.flac')``
    for AudioSet_SL, ``f'{id}.flac'`` for the others)."""
    audioset = source == "AudioSet_SL" and wavcaps_id.endswith(".wav")
    name = wavcaps_id[:-4] + ".flac" if audioset else f"{wavcaps_id}.flac"
    return f"{source}/{name}"


def read_wavcaps_json(path: str | Path) -> list[tuple[str, str, int]]:
    """(id, caption, entry number from 1) of every entry; DataError naming the file and entry otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: a WavCaps metadata file is an object with a 'data' list; found "
                        f"{type(doc).__name__} with keys {sorted(doc)[:5] if isinstance(doc, dict) else '-'}")
    n_caps = doc.get("num_captions_per_audio", 1)
    if n_caps != 1:
        raise DataError(f"{path}: num_captions_per_audio is {n_caps!r}; WavCaps' source files have one caption "
                        "per clip (a Clotho/AudioCaps JSON of WavCaps' retrieval code is not a WavCaps source)")
    out = []
    for i, entry in enumerate(doc["data"], start=1):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {i} of 'data' is {type(entry).__name__}, not an object")
        missing = [k for k in ("id", "caption") if entry.get(k) is None]
        if missing:
            raise DataError(f"{path}: entry {i} (id {entry.get('id')!r}) lacks field(s) {missing}; every WavCaps "
                            "entry needs 'id' and 'caption'")
        if not isinstance(entry["caption"], str) or not isinstance(entry["id"], (str, int)):
            raise DataError(f"{path}: entry {i} (id {entry['id']!r}): 'caption' must be a string and 'id' a "
                            f"string or integer, got {type(entry['caption']).__name__} / {type(entry['id']).__name__}")
        out.append((str(entry["id"]), entry["caption"], i))
    return out


def _blacklist_id_key(value: str) -> str | None:
    """aac-datasets / DCASE CSV id -> key: ``Y<ytid>.wav`` is AudioSet, digits Freesound, else (``Not found``) None."""
    value = value.strip()
    if value.startswith("Y") and value.endswith(".wav"):
        return f"audioset:{value[1:-4]}"
    return f"freesound:{value}" if value.isdigit() else None


def read_blacklist(path: str | Path) -> frozenset[str]:
    """Identity keys listed by a blacklist file (module docstring for the three formats)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"WavCaps blacklist file {path} not found")
    keys: set[str] = set()
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_bytes())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(doc, dict) or set(doc) - set(BLACKLIST_KEYS):
            raise DataError(f"{path}: a WavCaps blacklist is an object with lists 'AudioSet' and/or 'FreeSound'; "
                            f"found {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        for name, ids in doc.items():
            for v in ids:
                # the release lists unresolved Freesound sounds as "Not found": nothing to exclude
                key = _blacklist_id_key(str(v)) if name == "FreeSound" else identity_key("AudioSet_SL", str(v))
                if key and key.startswith(BLACKLIST_KEYS[name] + ":"):
                    keys.add(key)
        return frozenset(keys)
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    column = next((c for c in ("id", "sound_id") if c in (rows.fieldnames or [])), None)
    if column is None:
        raise DataError(f"{path}: row 1 (header) needs a column 'id' (aac-datasets) or 'sound_id' (DCASE 2025); "
                        f"found {rows.fieldnames}")
    for row in rows:
        key = _blacklist_id_key(row[column] or "")
        if key and (column == "id" or key.startswith("freesound:")):
            keys.add(key)
    return frozenset(keys)


class WavCapsDataModule(AudioCaptionDataModule):
    """WavCaps from ``root`` (module docstring).

    Args:
        root: the WavCaps folder (json_files/, Audio/) or an aac-datasets root (its WavCaps/ folder).
        sources: parts to read, any of AudioSet_SL, BBC_Sound_Effects, FreeSound, SoundBible
            (default: every part whose JSON file is there; a listed part must be there).
        blacklist_files: clips to leave out (the release's blacklist JSONs, aac-datasets' CSVs, DCASE
            2025's excluded Freesound ids); a relative path is looked up under the WavCaps folder,
            then under the working directory.
        json_dir: folder of the per-source JSON files, under the WavCaps folder.
        audio_dir: folder holding one sub-folder of audio per source, under the WavCaps folder.
        extensions: tried in order when ``<id>.flac`` is absent (same stem): e.g. the DCASE 2025 baseline's mp3 copy.
        val_size: clips carved out (by a hash of the file name) as a validation split when WavCaps is
            trained alone; 0 = none (WavCaps publishes no evaluation split).
        layout: ``auto``, ``default`` or ``aac-datasets`` (data_modules/layouts.py).
        **kwargs: the shared options of ``AudioCaptionDataModule``.
    """

    EVAL_SPLITS = ()

    def __init__(self, root: str, sources: list[str] | None = None, blacklist_files: list[str] | None = None,
                 json_dir: str = "json_files", audio_dir: str = "Audio", extensions: list[str] | None = None,
                 val_size: int = 0, layout: Layout = "auto", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.layout, self.folder = wavcaps_layout(self.root, layout)
        self.json_dir, self.audio_dir = self._under(json_dir), self._under(audio_dir)
        self.sources = list(sources) if sources is not None else [s for s in SOURCES if self.json_path(s).is_file()]
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ConfigError(f"data sources {unknown}: choose from {list(SOURCES)}" if unknown else
                              f"WavCaps: no metadata file under {self.json_dir} (json_files/<Source>/*_final.json); "
                              "set root (the WavCaps folder or an aac-datasets root) or json_dir")
        self.blacklist_files = [self._under(p) if self._under(p).exists() else Path(p) for p in blacklist_files or []]
        exts = extensions if extensions is not None else [".flac", ".wav", ".mp3"]
        self.extensions = tuple(e if e.startswith(".") else "." + e for e in exts)
        self.val_size = val_size
        self._source: SplitSource | None = None
        self._blacklist: frozenset[str] | None = None

    def _under(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.folder / p

    def json_path(self, source: str) -> Path:
        return self.json_dir / source / SOURCES[source][0]

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val") if self.val_size > 0 else ("train",)

    def excluded_keys(self, name: str) -> frozenset[str]:
        if self._blacklist is None:
            self._blacklist = frozenset().union(*(read_blacklist(p) for p in self.blacklist_files))
            if self.blacklist_files:
                log.info("WavCaps: %d keys blacklisted by %s", len(self._blacklist),
                         ", ".join(str(p) for p in self.blacklist_files))
        return super().excluded_keys(name) | self._blacklist

    def _all(self) -> SplitSource:
        """Every entry of the chosen sources, read once (the FreeSound file is 147 MB)."""
        if self._source is None:
            rows: list[tuple[str, list[str], int]] = []
            keys: dict[str, str] = {}
            for source in self.sources:
                path = self.json_path(source)
                if not path.is_file():
                    raise FileNotFoundError(f"WavCaps {source} metadata {path} not found; set root (the WavCaps folder "
                                            f"or an aac-datasets root), sources or json_dir")
                index = FolderIndex(self.audio_dir / source)
                for wid, caption, entry in read_wavcaps_json(path):
                    name = audio_name(source, wid)
                    found = index.find(name.split("/", 1)[1], self.extensions)
                    fname = f"{source}/{found}" if found else name
                    rows.append((fname, [caption], entry))
                    keys[fname] = identity_key(source, wid)
            self._source = SplitSource("train", self.audio_dir, self.json_dir, rows, keys)
        return self._source

    def split_source(self, name: str) -> SplitSource:
        if name == "test" or (name == "val" and self.val_size <= 0):
            raise ConfigError(f"WavCaps has no {name} split: set data val_size > 0 to carve a validation split, or "
                              "train with data_modules.MultiDataModule and evaluate on Clotho / AudioCaps")
        src = self._all()
        if self.val_size <= 0:
            return src
        # the val_size clips with the smallest name hash: the same for every seed and machine
        val = set(sorted({r[0] for r in src.rows}, key=stable_fraction)[:self.val_size])
        rows = [r for r in src.rows if (r[0] in val) == (name == "val")]
        return SplitSource(name, src.audio_dir, src.csv, rows, src.keys)
