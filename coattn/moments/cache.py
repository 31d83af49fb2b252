"""``IndexCache``: frozen towers run ONCE per recording and per query; moment training reads features.

With both towers frozen (``freeze: true``), a recording's stitched frame index (``MomentModel.index``:
the sliding tower + stitching) and a query's token features never change, so they are computed once
and kept in two ``coattn.store.FeatureStore`` folders (memory-mapped ``.npy`` shards, atomic writes,
damaged shards healed):

    <root>/index/<sha1(meta)>/   one row per recording: states (F, D) the stitched frames, mask (F,)
                                 meta: the audio tower's identity + weights digest, sample rate,
                                 window, index hop, frame seconds                 entry: file_key(path)
    <root>/text/<sha1(meta)>/    one row per query string: tokens (L, D), mask, pooled
                                 meta: the text tower's identity + weights digest  entry: caption_key

Any change of tower, weights, rate, window or hop is another folder; a rewritten audio file (size or
mtime) another entry. Training crops are then slices of the index (``crop_frames``), which is also
what evaluation localises on: the head sees the same stitched frames in both.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from coattn.features import SequenceFeatures
from coattn.moments.model import MomentModel, RecordingIndex
from coattn.store import FeatureStore, caption_key, encoder_key, file_key


class IndexCache:
    """Recording indices and query features of a ``MomentModel`` with frozen towers (module docstring).

    ``load_audio(path, sample_rate) -> (S,) waveform`` reads a recording (coattn.audio.load_audio).
    Indices are kept in memory once read (a 60 s recording of the aisfx tower: 323 x 512 floats, 0.7 MB).
    """

    def __init__(self, root: str | os.PathLike, mm: MomentModel, load_audio: Callable[[Path, int], torch.Tensor]):
        self.root, self.mm, self.load_audio = Path(root), mm, load_audio
        self._index: dict[str, RecordingIndex] = {}
        self._text: dict[str, SequenceFeatures] = {}
        self._audio_store: FeatureStore | None = None
        self._text_store: FeatureStore | None = None
        self.stats = {"recordings_built": 0, "queries_built": 0, "build_seconds": 0.0}

    def index_meta(self) -> dict:
        mm = self.mm
        return {"kind": "moment_index", **encoder_key(mm.model.audio_encoder), "sample_rate": mm.sample_rate,
                "clip_samples": mm.clip_samples, "hop_samples": mm.hop_samples, "frame_seconds": mm.frame_seconds,
                "entry_key": "resolved path + size + mtime_ns"}

    def text_meta(self) -> dict:
        return {"kind": "text", **encoder_key(self.mm.model.text_encoder), "entry_key": "sha1(query)"}

    @property
    def audio_store(self) -> FeatureStore:
        if self._audio_store is None:
            meta = self.index_meta()
            self._audio_store = FeatureStore.keyed(self.root / "index", meta)
        return self._audio_store

    @property
    def text_store(self) -> FeatureStore:
        if self._text_store is None:
            meta = self.text_meta()
            self._text_store = FeatureStore.keyed(self.root / "text", meta)
        return self._text_store

    # ---- building: each missing recording / query once -----------------------------------------
    def build(self, paths: Iterable[str | os.PathLike], queries: Iterable[str], progress=None) -> dict:
        """Index every recording and encode every query not yet stored. ``progress(done, total)`` is called
        after each recording. Returns ``stats``."""
        t0 = time.perf_counter()
        todo = [Path(p) for p in dict.fromkeys(str(p) for p in paths)]
        todo = [p for p in todo if file_key(p) not in self.audio_store]
        for i, p in enumerate(todo):
            index = self.mm.index(self.load_audio(p, self.mm.sample_rate))
            frames = index.frames.float().cpu()[None]
            mask = torch.ones(frames.shape[:2], dtype=torch.bool)
            # pooled: the duration in seconds in column 0 (the index's own metadata; a row has no other slot)
            pooled = torch.zeros(1, frames.shape[-1])
            pooled[0, 0] = index.duration
            self.audio_store.write([file_key(p)], SequenceFeatures(frames, mask, pooled))
            if progress:
                progress(i + 1, len(todo))
        texts = [q for q in dict.fromkeys(queries) if caption_key(q) not in self.text_store]
        for i in range(0, len(texts), 64):
            chunk = texts[i:i + 64]
            with torch.no_grad():
                feats = self.mm.model.encode_text(chunk)
            self.text_store.write([caption_key(q) for q in chunk], feats.to("cpu"))
        self.stats["recordings_built"] += len(todo)
        self.stats["queries_built"] += len(texts)
        self.stats["build_seconds"] += time.perf_counter() - t0
        return self.stats

    # ---- reading ---------------------------------------------------------------------------------
    def index(self, path: str | os.PathLike) -> RecordingIndex:
        """The stitched index of a recording (built on a miss)."""
        key = file_key(path)
        if key not in self._index:
            if key not in self.audio_store:
                self.build([path], [])
            feats, _ = self.audio_store.get([key])
            frames = feats.states[0][feats.mask[0]]
            self._index[key] = RecordingIndex(frames, self.mm.frame_seconds, float(feats.pooled[0, 0]))
        return self._index[key]

    def text(self, queries: Sequence[str]) -> SequenceFeatures:
        """Token features of the queries (built on a miss), padded to the longest."""
        missing = [q for q in dict.fromkeys(queries) if q not in self._text]
        if missing:
            if any(caption_key(q) not in self.text_store for q in missing):
                self.build([], missing)
            feats, _ = self.text_store.get([caption_key(q) for q in missing])
            for i, q in enumerate(missing):
                n = int(feats.mask[i].sum())
                self._text[q] = SequenceFeatures(feats.states[i, :n], feats.mask[i, :n], feats.pooled[i])
        rows = [self._text[q] for q in queries]
        length = max(r.states.shape[0] for r in rows)
        states = torch.zeros(len(rows), length, rows[0].states.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :len(r.mask)], mask[i, :len(r.mask)] = r.states, r.mask
        return SequenceFeatures(states, mask, torch.stack([r.pooled for r in rows]))

    def crops(self, paths: Sequence[str | os.PathLike], starts: Sequence[float],
              num_frames: int | None = None) -> tuple[SequenceFeatures, torch.Tensor]:
        """Training crops from the indices: ``num_frames`` frames (default: the tower's) from the frame nearest
        each start (seconds). Returns the features (pooled as the tower pools its frames) and each crop's start
        in seconds."""
        n = num_frames or self.mm.num_frames
        rows = [crop_frames(self.index(p), s, n) for p, s in zip(paths, starts)]
        states = torch.stack([r[0] for r in rows])
        mask = torch.stack([r[1] for r in rows])
        return (SequenceFeatures(states, mask, self.mm.pool_frames(states, mask)),
                torch.tensor([r[2] for r in rows], dtype=torch.float32))


def crop_frames(index: RecordingIndex, start: float, num_frames: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``num_frames`` frames of the index from the frame nearest ``start`` s (zero-padded past the end, masked):
    (frames, mask, start of the first frame in seconds)."""
    total = index.frames.shape[0]
    a = max(0, min(int(round(start / index.frame_seconds)), max(total - num_frames, 0)))
    frames = index.frames[a:a + num_frames]
    n = frames.shape[0]
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[:n] = True
    return torch.nn.functional.pad(frames, (0, 0, 0, num_frames - n)), mask, a * index.frame_seconds
