"""``AudioCaptionDataModule``: the base class Clotho and AudioCaps subclass.

Subclasses only say where clips and captions are (``split_source``); this class owns
everything shared: path safety, missing clips, streaming datasets, samplers, the batch.

The batch contract (every loader yields one dict; the LightningModule relies on it):

    audio         FloatTensor (B, S)   S = sample_rate * clip_seconds (480,000 by default)
    clip_index    LongTensor  (B,)     index of the clip in its split, stable (split_clips order)
    fnames        list[str]   (B)      file name as in the caption file
    captions      list[str]   (C)      train: one per item (C == B); eval: all captions of the
                                       B clips, flattened in clip order
    caption_clip  LongTensor  (C,)     clip_index of each caption
    valid         BoolTensor  (B,)     False where the clip could not be read (audio is silence)

``set_load_audio(False)`` (a model with a feature cache) skips decoding: audio is then (B, 0).

Evaluation loaders visit every clip exactly once, in split order (under DDP Lightning's
DistributedSampler pads the last batch with repeats: deduplicate on ``clip_index``). Training
items are (clip, caption) pairs, or clips with a random caption (``train_items="clip"``); the
sampler keeps the captions of one clip out of the same batch where it can (single process),
and ``clip_index`` lets the loss mask same-clip pairs wherever it cannot (DDP reshuffles).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import multiprocessing
import multiprocessing.context
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_modules.audio_io import AudioReadError, load_clip

log = logging.getLogger("coattn.data")

SPLIT_ALIASES = {"train": "train", "fit": "train", "val": "val", "validate": "val", "validation": "val",
                 "test": "test", "predict": "predict"}


# ----------------------------------------------------------------------------------------------
# Caption files and paths


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


@dataclass
class SplitSource:
    """What a caption file says about a split, before any file is looked at.

    rows: (file name relative to ``audio_dir``, captions of that row, line in ``csv``).
    Rows naming the same file are merged into one clip (AudioCaps: one row per caption).
    """

    name: str
    audio_dir: Path
    csv: Path
    rows: list[tuple[str, list[str], int]]


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

    def __len__(self) -> int:
        return len(self.fnames)


def make_split(source: SplitSource, exclude: set[str] | frozenset[str] = frozenset()) -> Split:
    """Keep the clips whose audio exists, is safe and is not excluded; the rest is listed, never fatal.

    Empty captions are dropped; a clip left without captions is dropped too. A row repeated
    verbatim (same file, same captions) is read once. Both are counted in one warning.
    ``exclude`` holds file names (e.g. the unreadable clips ``coattn data-check`` found) to leave out up front.
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
    root_resolved = audio_dir.resolve()
    for fname in order:
        try:
            path = resolve_in_root(audio_dir, fname, root_resolved)
        except UnsafePathError as exc:
            split.rejected.append(fname)
            log.error("%s split: rejected a row of %s: %s", source.name, source.csv, exc)
            continue
        if fname in exclude:
            split.excluded.append(fname)
        elif not path.is_file():
            split.missing.append(fname)
        elif caps[fname]:
            split.fnames.append(fname)
            split.paths.append(path)
            split.captions.append(caps[fname])
    return split


# ----------------------------------------------------------------------------------------------
# Datasets


class _SkipCounter:
    """Clips replaced by silence, counted across DataLoader worker processes (shared memory).

    A ``multiprocessing.Value`` may only travel to processes being started; anywhere else
    (deepcopy, plain pickling) the copy restarts from zero instead of raising.
    """

    def __init__(self):
        self.value = multiprocessing.Value("l", 0)

    def add(self, n: int = 1) -> None:
        with self.value.get_lock():
            self.value.value += n

    def get(self) -> int:
        return int(self.value.value)

    def __getstate__(self):
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"value": self.value}
        return {"value": None}

    def __setstate__(self, state):
        self.value = state["value"] if state["value"] is not None else multiprocessing.Value("l", 0)


class _ClipReader:
    """Reads one clip, turning any failure into silence + ``valid=False`` (never kills a worker)."""

    def __init__(self, split: Split, sample_rate: int, length: int):
        self.split, self.sample_rate, self.length = split, sample_rate, length
        self.skipped = _SkipCounter()
        self.load_audio = True  # False: a feature cache supplies the audio features (set_load_audio)

    def read(self, clip: int, mode: str, generator: torch.Generator | None) -> tuple[torch.Tensor, bool]:
        if not self.load_audio:
            return torch.zeros(0), True
        try:
            return load_clip(self.split.paths[clip], self.sample_rate, self.length, mode, generator), True
        except AudioReadError as exc:
            self.skipped.add()
            log.warning("%s split: clip %d replaced by silence (%d so far; `coattn data-check` lists them all): %s",
                        self.split.name, clip, self.skipped.get(), exc)
            return torch.zeros(self.length), False


class TrainDataset(Dataset):
    """Training items; indexed by (item, draw) pairs from ``EpochSampler``.

    The draw (a 62-bit integer chosen in the main process) seeds the crop, the caption choice
    and the paraphrase choice, so an epoch is reproducible whatever the number of workers.
    """

    def __init__(self, split: Split, sample_rate: int, length: int, items: Literal["caption", "clip"] = "caption",
                 crop: str = "random", paraphrases: dict[str, list[str]] | None = None, augment_prob: float = 0.0):
        self.split, self.items_mode, self.crop = split, items, crop
        self.reader = _ClipReader(split, sample_rate, length)
        self.paraphrases, self.augment_prob = paraphrases or {}, augment_prob
        if items == "caption":
            self.items = [(c, k) for c in range(len(split)) for k in range(len(split.captions[c]))]
        elif items == "clip":
            self.items = [(c, -1) for c in range(len(split))]
        else:
            raise ValueError(f"train_items must be 'caption' or 'clip', got {items!r}")

    def __len__(self) -> int:
        return len(self.items)

    def groups(self) -> list[list[int]]:
        """Item indices per clip (what the sampler keeps apart within a batch)."""
        out: list[list[int]] = [[] for _ in range(len(self.split))]
        for i, (c, _) in enumerate(self.items):
            out[c].append(i)
        return out

    def caption_for(self, index: int, rng: np.random.Generator) -> str:
        clip, k = self.items[index]
        caps = self.split.captions[clip]
        text = caps[k] if k >= 0 else caps[int(rng.integers(len(caps)))]
        if self.augment_prob > 0 and rng.random() < self.augment_prob:
            options = self.paraphrases.get(text)
            if options:
                text = options[int(rng.integers(len(options)))]
        return text

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, key)
        clip = self.items[index][0]
        rng = np.random.default_rng(draw)
        caption = self.caption_for(index, rng)
        generator = torch.Generator().manual_seed(int(draw))
        audio, ok = self.reader.read(clip, self.crop, generator)
        return {"audio": audio, "clip_index": clip, "fname": self.split.fnames[clip], "captions": [caption],
                "valid": ok}


class ClipDataset(Dataset):
    """Evaluation items: one per clip with all its captions, deterministic crop."""

    def __init__(self, split: Split, sample_rate: int, length: int, crop: str = "start"):
        self.split, self.crop = split, crop
        self.reader = _ClipReader(split, sample_rate, length)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, clip: int) -> dict:
        audio, ok = self.reader.read(clip, self.crop, None)
        return {"audio": audio, "clip_index": clip, "fname": self.split.fnames[clip],
                "captions": list(self.split.captions[clip]), "valid": ok}


def collate(items: list[dict]) -> dict:
    """Stack audio; flatten captions with the clip each one belongs to."""
    return {
        "audio": torch.stack([it["audio"] for it in items]),
        "clip_index": torch.tensor([it["clip_index"] for it in items], dtype=torch.long),
        "fnames": [it["fname"] for it in items],
        "captions": [c for it in items for c in it["captions"]],
        "caption_clip": torch.tensor([it["clip_index"] for it in items for _ in it["captions"]], dtype=torch.long),
        "valid": torch.tensor([it["valid"] for it in items], dtype=torch.bool),
    }


class EpochSampler(Sampler):
    """Seeded shuffle that yields (item, draw) pairs and keeps one clip's items out of a batch.

    An epoch is a sequence of rounds; round r holds the r-th (shuffled) caption of every clip
    in a fresh random clip order, so a batch inside a round never holds two captions of one clip.
    At a round boundary the head of the next round is swapped so that it shares no clip with
    the tail of the previous one (possible when there are >= 2 batches of clips). Lightning
    calls ``set_epoch`` before every epoch, so resuming reproduces the order.
    """

    def __init__(self, groups: list[list[int]], batch_size: int, seed: int = 0):
        self.groups, self.batch_size, self.seed, self.epoch = groups, batch_size, seed, 0
        self.n = sum(len(g) for g in groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        per_clip = [list(rng.permutation(g)) for g in self.groups]
        rounds = max((len(g) for g in self.groups), default=0)
        B = self.batch_size
        seq: list[int] = []
        tail: set[int] = set()
        for r in range(rounds):
            clips = [c for c, g in enumerate(self.groups) if len(g) > r]
            perm = [clips[i] for i in rng.permutation(len(clips))]
            if tail and len(perm) >= 2 * B:
                spare = (j for j in range(B, len(perm)) if perm[j] not in tail)
                for i in range(B):
                    if perm[i] in tail:
                        j = next(spare, None)
                        if j is None:
                            break
                        perm[i], perm[j] = perm[j], perm[i]
            seq.extend(per_clip[c][r] for c in perm)
            tail = set(perm[-B:])
        return seq

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1  # without set_epoch (plain loops) the next pass still differs
        seq = self.order(epoch)
        draws = np.random.default_rng([self.seed, epoch, 1]).integers(0, 2 ** 62, size=len(seq))
        return iter(zip(seq, (int(d) for d in draws)))


# ----------------------------------------------------------------------------------------------
# The data module


class AudioCaptionDataModule(pl.LightningDataModule):
    """Shared base of ``ClothoDataModule`` and ``AudioCapsDataModule``.

    Args:
        batch_size: training batch (items = caption-clip pairs).
        eval_batch_size: clips per validation/test/predict batch (each brings all its captions).
        num_workers: DataLoader processes decoding audio (2 saturate our 2-core machines).
        pin_memory: page-locked batches for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs (only with num_workers > 0).
        sample_rate: rate the audio encoder expects (CLAP: 48 kHz).
        clip_seconds: input length of the audio encoder (CLAP: 10 s).
        train_crop: crop of clips longer than clip_seconds in training.
        eval_crop: deterministic crop for evaluation.
        train_items: "caption" = one item per (clip, caption) pair, every caption once per epoch
            (Clotho's convention); "clip" = one item per clip with a random caption.
        seed: shuffling, crops and caption choices.
        augmentation_file: JSON/JSONL of paraphrases written by ``coattn augment`` (training only).
        augment_prob: probability that a training caption is replaced by one of its paraphrases.
        exclude_file: file names to leave out of every split, one per line (``coattn data-check``
            writes one: ``<report>.exclude.txt``); '#' starts a comment.
        report_dir: where the lists of missing/rejected clips go (``missing_<split>.txt``);
            default: the trainer's log_dir, else ``<tmp>/coattn-data-reports``.
    """

    def __init__(self, batch_size: int = 32, eval_batch_size: int = 16, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, sample_rate: int = 48000,
                 clip_seconds: float = 10.0, train_crop: Literal["random", "start", "centre"] = "random",
                 eval_crop: Literal["start", "centre"] = "start", train_items: Literal["caption", "clip"] = "caption",
                 seed: int = 0, augmentation_file: str | None = None, augment_prob: float = 0.0,
                 exclude_file: str | None = None, report_dir: str | None = None):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size and eval_batch_size must be >= 1 and num_workers >= 0")
        if not 0.0 <= augment_prob <= 1.0:
            raise ValueError(f"augment_prob must be in [0, 1], got {augment_prob}")
        if augment_prob > 0 and not augmentation_file:
            raise ValueError("augment_prob > 0 needs augmentation_file (written by `coattn augment`)")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.sample_rate, self.clip_seconds = sample_rate, clip_seconds
        self.train_crop, self.eval_crop, self.train_items = train_crop, eval_crop, train_items
        self.seed = seed
        self.augmentation_file, self.augment_prob = augmentation_file, augment_prob
        self.exclude_file, self.report_dir = exclude_file, report_dir
        self._exclude: frozenset[str] | None = None
        self._splits: dict[str, Split] = {}
        self._datasets: dict[str, Dataset] = {}
        self._paraphrases: dict[str, list[str]] | None = None
        self._load_audio = True

    # -- subclasses -----------------------------------------------------------------------------
    def split_source(self, name: str) -> SplitSource:
        """Rows of the caption file of "train", "val" or "test" (also used by ``coattn data-check``)."""
        raise NotImplementedError

    def split_names(self) -> tuple[str, ...]:
        return ("train", "val", "test")

    # -- splits ---------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def split(self, stage: str) -> Split:
        """The Split behind a stage name: train/fit, val/validate, test, predict (= test)."""
        if stage not in SPLIT_ALIASES:
            raise ValueError(f"unknown split {stage!r}; use one of {sorted(SPLIT_ALIASES)}")
        name = SPLIT_ALIASES[stage]
        name = "test" if name == "predict" else name
        if name not in self._splits:
            source = self.split_source(name)
            s = make_split(source, self.excluded_names())
            if len(s) == 0:
                raise ValueError(f"{name} split has no usable clips in {s.audio_dir} (listed in {source.csv}: "
                                 f"{len(s.missing)} missing, {len(s.rejected)} rejected, {len(s.excluded)} excluded); "
                                 "check root and the audio folder options")
            self._report(s, source)
            self._splits[name] = s
        return self._splits[name]

    def excluded_names(self) -> frozenset[str]:
        if self._exclude is None:
            names: set[str] = set()
            if self.exclude_file:
                for line in Path(self.exclude_file).read_text(encoding="utf-8").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        names.add(line)
            self._exclude = frozenset(names)
        return self._exclude

    def _report(self, s: Split, source: SplitSource) -> None:
        """Once per split (rank 0): a warning with counts, and the lists written to files."""
        if not (s.missing or s.rejected) or getattr(self.trainer, "global_rank", 0) != 0:
            if s.excluded:
                log.info("%s split: %d clips left out by %s", s.name, len(s.excluded), self.exclude_file)
            return
        out = Path(self.report_dir or getattr(self.trainer, "log_dir", None) or
                   Path(tempfile.gettempdir()) / "coattn-data-reports")
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for kind, names in (("missing", s.missing), ("rejected", s.rejected)):
            if names:
                f = out / f"{kind}_{s.name}.txt"
                f.write_text("".join(n + "\n" for n in names), encoding="utf-8")
                files.append(str(f))
        total = len(s) + len(s.missing) + len(s.rejected) + len(s.excluded)
        log.warning("%s split: using %d of %d clips listed in %s: %d missing from %s, %d rejected (unsafe names), "
                    "%d excluded; lists in %s", s.name, len(s), total, source.csv, len(s.missing), s.audio_dir,
                    len(s.rejected), len(s.excluded), ", ".join(files))

    def split_clips(self, stage: str) -> list[str]:
        """File names in clip_index order."""
        return list(self.split(stage).fnames)

    def split_captions(self, stage: str) -> tuple[list[str], list[int]]:
        """All captions in the order the loader yields them (clip order), with their clip index."""
        s = self.split(stage)
        texts = [c for caps in s.captions for c in caps]
        clips = [i for i, caps in enumerate(s.captions) for _ in caps]
        return texts, clips

    def train_captions(self) -> list[str]:
        """Every training caption (e.g. to train the tiny model's tokenizer)."""
        return self.split_captions("train")[0]

    @property
    def skipped_clips(self) -> dict[str, int]:
        """Clips replaced by silence so far, per split (summed over worker processes)."""
        return {k: d.reader.skipped.get() for k, d in self._datasets.items()}

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
                  None: ("train", "val", "test")}[stage]
        for name in wanted:
            self._dataset(name)

    def _dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            s = self.split(name)
            if name == "train":
                self._datasets[name] = TrainDataset(s, self.sample_rate, self.num_samples, self.train_items,
                                                    self.train_crop, self.paraphrases(), self.augment_prob)
            else:
                self._datasets[name] = ClipDataset(s, self.sample_rate, self.num_samples, self.eval_crop)
            self._datasets[name].reader.load_audio = self._load_audio
        return self._datasets[name]

    def set_load_audio(self, enabled: bool) -> None:
        """Decode clips (default) or yield ``audio`` of shape (B, 0): the model sets False when its
        feature cache supplies the audio features (``coattn.feature_cache``). Call before iterating."""
        self._load_audio = enabled
        for ds in self._datasets.values():
            ds.reader.load_audio = enabled

    def paraphrases(self) -> dict[str, list[str]]:
        """caption -> kept paraphrases, from ``augmentation_file`` ({} without one)."""
        if self._paraphrases is None:
            self._paraphrases = {}
            if self.augmentation_file:
                from data_modules.augmentation import load_augmentation_file
                self._paraphrases = load_augmentation_file(self.augmentation_file)
        return self._paraphrases

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.persistent_workers, "collate_fn": collate}

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        sampler = EpochSampler(ds.groups(), self.batch_size, self.seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=len(ds) > self.batch_size,
                          **self._loader_kwargs())

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(self._dataset(name), batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by ``name`` alone: for carving subsets that survive added rows."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64
