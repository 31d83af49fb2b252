"""``MomentDataModule``: moment retrieval data in the Lighthouse / QVHighlights JSON-lines layout.

One query per line (extra keys, e.g. Clotho-Moment's ``fg_dB``, are ignored):

    {"qid": "32694", "query": "A toilet flushes ...", "vid": "Singapore_0.0_60.0", "duration": 60,
     "relevant_windows": [[41.1, 48.1]]}

Audio: ``{audio_dir}/{vid}{audio_ext}`` (``{split}`` in ``audio_dir`` becomes train / val / test).
Clotho-Moment (Lighthouse data/clotho_moment/clotho_moment_{train,val,test}_release.jsonl, 60 s
recordings) and CASTELLA (data/castella/castella_*_release.jsonl, 1-5 min YouTube recordings, several
windows per query) load as they are released, once their audio is in a folder by ``vid``. CASTELLA's
windows end up to 1 s past ``duration`` (e.g. [118, 300] in a 299 s recording): ends within
``window_tolerance`` seconds of the end are clipped to it; anything else outside the recording is an
error. Every problem is found at start-up and reported as ONE line naming the file, line and qid.

Training items: one (query, crop) pair, the crop being ``clip_seconds`` of the recording (the audio
tower's input) that holds one of the query's windows with probability ``positive_prob`` (else a random
crop, often with no window: the head learns "not here"). Windows come back relative to the crop, in
seconds. Evaluation items: one recording, whole, with all its queries (the model slides its tower
over it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from coattn.audio import load_audio
from coattn.errors import DataError, DataNotFoundError

FIELDS = ("qid", "query", "vid", "duration", "relevant_windows")


@dataclass  # not frozen: Lightning's batch transfer rebuilds dataclasses field by field
class MomentQuery:
    qid: str
    query: str
    vid: str
    duration: float
    windows: tuple[tuple[float, float], ...]
    audio: Path


def read_moments(path: str | Path, audio_dir: str | Path, audio_ext: str = ".wav",
                 window_tolerance: float = 2.0) -> list[MomentQuery]:
    """Every query of a Lighthouse-layout JSONL file, checked; a DataError names the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: moment file not found; give the JSONL of the split "
                                "(Lighthouse layout: qid, query, vid, duration, relevant_windows)")
    audio_dir = Path(audio_dir)
    out, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg}); one JSON object per line") from None
        missing = [f for f in FIELDS if f not in d] if isinstance(d, dict) else list(FIELDS)
        if missing:
            raise DataError(f"{where}: field(s) {missing} missing; each line needs {', '.join(FIELDS)}")
        where = f"{where} (qid {d['qid']})"
        if str(d["qid"]) in seen:
            raise DataError(f"{where}: qid repeated; qids must be unique within a file")
        seen.add(str(d["qid"]))
        try:
            duration = float(d["duration"])
            wins = [(float(w[0]), float(w[1])) for w in d["relevant_windows"]]
        except (TypeError, ValueError, IndexError):
            raise DataError(f"{where}: duration must be a number and relevant_windows a list of "
                            "[start, end] pairs in seconds") from None
        if not duration > 0:
            raise DataError(f"{where}: duration {d['duration']} is not positive")
        if not wins:
            raise DataError(f"{where}: relevant_windows is empty; give at least one [start, end] or drop the query")
        fixed = []
        for s, e in wins:
            if e <= s:
                raise DataError(f"{where}: window [{s:g}, {e:g}] ends before (or where) it starts; swap or "
                                "remove it")
            if s < 0 or s >= duration or e > duration + window_tolerance:
                raise DataError(f"{where}: window [{s:g}, {e:g}] lies outside the recording (0 to {duration:g} "
                                f"s); fix the window or the duration")
            fixed.append((s, min(e, duration)))
        audio = audio_dir / f"{d['vid']}{audio_ext}"
        if not audio.is_file():
            raise DataError(f"{where}: audio file {audio} not found; put the recording of vid {d['vid']!r} "
                            f"there or set data.audio_dir / data.audio_ext")
        out.append(MomentQuery(str(d["qid"]), str(d["query"]), str(d["vid"]), duration, tuple(fixed), audio))
    if not out:
        raise DataError(f"{path}: no queries in the file")
    return out


class MomentTrainDataset(Dataset):
    """(query, crop of clip_samples, windows relative to the crop) per query; crops are random per epoch."""

    def __init__(self, queries: list[MomentQuery], sample_rate: int, clip_samples: int, positive_prob: float,
                 seed: int):
        self.queries, self.sr, self.n, self.p, self.seed = queries, sample_rate, clip_samples, positive_prob, seed
        self.epoch = 0
        self.load = True  # False (feature cache): items carry the crop's start, not its samples

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int):
        q = self.queries[i]
        self.epoch += 1  # a new crop on every visit (per loader process: the draw count stands in for the epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + i)
        wave = load_audio(q.audio, self.sr) if self.load else None
        total, clip_s = (wave.shape[-1] / self.sr if self.load else q.duration), self.n / self.sr
        hi = max(total - clip_s, 0.0)
        if float(torch.rand((), generator=g)) < self.p:  # a crop that holds the centre of one window
            s, e = q.windows[int(torch.randint(len(q.windows), (), generator=g))]
            lo_c, hi_c = max(0.0, min(s, (s + e) / 2) - clip_s + 1e-3), min(hi, (s + e) / 2)
            start = lo_c + float(torch.rand((), generator=g)) * max(hi_c - lo_c, 0.0)
        else:
            start = float(torch.rand((), generator=g)) * hi
        a = int(round(min(start, hi) * self.sr))
        t0 = a / self.sr
        if not self.load:  # the model cuts the crop from its cached index and re-bases the windows on it
            return q.query, (str(q.audio), t0), [(s, e) for s, e in q.windows]
        crop = wave[a:a + self.n]
        crop = torch.nn.functional.pad(crop, (0, self.n - crop.shape[-1]))
        wins = [(max(s - t0, 0.0), min(e - t0, clip_s)) for s, e in q.windows if e > t0 and s < t0 + clip_s]
        return q.query, crop, wins


def collate_train(items):
    """Batch of (query, crop, windows). Cached items (crop = (path, start s)) give ``paths`` + ``starts`` and
    ``audio`` of shape (B, 0), their windows in recording seconds; else windows relative to the crop."""
    k = max([len(w) for _, _, w in items] + [1])
    windows = torch.full((len(items), k, 2), -1.0)
    for b, (_, _, w) in enumerate(items):
        if w:
            windows[b, :len(w)] = torch.tensor(w)
    out = {"queries": [q for q, _, _ in items], "windows": windows}
    if isinstance(items[0][1], tuple):
        return out | {"paths": [c[0] for _, c, _ in items], "starts": torch.tensor([c[1] for _, c, _ in items]),
                      "audio": torch.zeros(len(items), 0)}
    return out | {"audio": torch.stack([c for _, c, _ in items])}


class MomentEvalDataset(Dataset):
    """One item per recording: its whole waveform and its queries."""

    def __init__(self, queries: list[MomentQuery], sample_rate: int, load: bool = True):
        self.sr, self.load = sample_rate, load
        self.by_vid: dict[str, list[MomentQuery]] = {}
        for q in queries:
            self.by_vid.setdefault(q.vid, []).append(q)
        self.vids = list(self.by_vid)

    def __len__(self) -> int:
        return len(self.vids)

    def __getitem__(self, i: int):
        qs = self.by_vid[self.vids[i]]
        audio = load_audio(qs[0].audio, self.sr) if self.load else torch.zeros(0)
        return {"vid": self.vids[i], "audio": audio, "path": str(qs[0].audio), "queries": qs}


class MomentDataModule(pl.LightningDataModule):
    """Train / val / test JSONL files in the Lighthouse layout and a folder of audio by ``vid``.

    Args:
        train_file, val_file, test_file: the splits' JSONL files (val/test may be null).
        audio_dir: folder of the recordings; ``{split}`` is replaced by train / val / test.
        audio_ext: file name ending after the vid (".wav", ".flac", ...).
        sample_rate: rate of the audio tower (CLAP: 48 kHz); recordings are resampled on reading.
        clip_seconds: the tower's input length: training crops, and the sliding window of evaluation.
        batch_size: training (query, crop) pairs per step.
        positive_prob: share of training crops that hold one of the query's windows.
        window_tolerance: seconds a window may end past ``duration`` (clipped); more is an error.
        num_workers, seed: loaders and crop draws.
    """

    def __init__(self, train_file: str | None = None, val_file: str | None = None, test_file: str | None = None,
                 audio_dir: str = "audio", audio_ext: str = ".wav", sample_rate: int = 48000,
                 clip_seconds: float = 10.0, batch_size: int = 16, positive_prob: float = 0.8,
                 window_tolerance: float = 2.0, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.audio_dir, self.audio_ext, self.sample_rate = audio_dir, audio_ext, sample_rate
        self.clip_samples = int(round(clip_seconds * sample_rate))
        self.batch_size, self.positive_prob, self.tolerance = batch_size, positive_prob, window_tolerance
        self.num_workers, self.seed = num_workers, seed
        self.splits: dict[str, list[MomentQuery]] = {}
        self.load_audio = True

    def set_load_audio(self, load: bool) -> None:
        """False: the model reads cached features (model.feature_cache), so batches carry paths and crop
        starts instead of samples."""
        self.load_audio = bool(load)

    def queries(self, split: str) -> list[MomentQuery]:
        if split not in self.splits:
            f = self.files.get(split)
            if not f:
                raise DataError(f"no {split} file: set data.init_args.{split}_file to a Lighthouse-layout JSONL")
            self.splits[split] = read_moments(f, self.audio_dir.replace("{split}", split), self.audio_ext,
                                              self.tolerance)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:  # read and check every file the stage needs, up front
        need = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage or "", [])
        for split in need:
            if self.files.get(split):
                self.queries(split)

    def train_dataloader(self) -> DataLoader:
        ds = MomentTrainDataset(self.queries("train"), self.sample_rate, self.clip_samples, self.positive_prob,
                                self.seed)
        ds.load = self.load_audio
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=collate_train,
                          num_workers=self.num_workers, drop_last=len(ds) > self.batch_size)

    def _eval(self, split: str) -> DataLoader:
        return DataLoader(MomentEvalDataset(self.queries(split), self.sample_rate, self.load_audio), batch_size=None,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        return self._eval("val") if self.files.get("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._eval("test")

