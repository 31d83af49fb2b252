"""Feature cache: a frozen encoder runs once per clip / caption; training and evaluation read its
outputs from memory-mapped ``.npy`` shards instead.

    model:
      feature_cache: cache/features     # opt-in; only frozen encoders (``freeze: true``) are cached

What is stored (float32, exactly what the encoder returned outside autocast):

    audio  per clip, for the deterministic crop: states (32, D) frames, mask, pooled (D,), valid
    text   per caption string: states (L, D) tokens (right-padded), mask, pooled (D,)

Keys (any change is a miss, and the entry is recomputed):

    encoder     ``encoder.identity()`` (config, checkpoint file path/mtime/size, tokenizer...) +
                a SHA-1 of the encoder's weights (so a fine-tuned-then-frozen or restored
                checkpoint never reads another model's features)     -> the store's folder
    crop        sample rate, clip length in samples, crop and pad mode -> the audio store's folder
    file        resolved path + size + mtime (ns) + a SHA-1 of 3 blocks of 4 KiB of the file
                (start, middle, end: ``coattn.io.file_fingerprint``)  -> the entry key
    caption     the caption string                                    -> the entry key

File identity is size + mtime + 12 KiB of content, not a full hash: hashing would read every file
on every run (Clotho's development split is ~7 GB, 3,839 files; AudioCaps ~50k). The 3 blocks
tell apart a clip replaced by another of the same size and mtime (``cp -p``, ``rsync -t``, an
unpacked archive); an edit confined to bytes outside them that keeps size and mtime is not seen
(``touch`` such a file). Each entry's bytes carry a CRC-32 written with them; the entries a split
uses are checked when the split is first used, and a damaged one is rebuilt with one warning
(coattn/store.py). Entries holding constant features (all zeros) are warned about, once.

Training with a random crop cannot be cached exactly (every epoch sees another window). With the
cache on, training reads the features of the data module's deterministic ``eval_crop`` window
(a log line says so when ``train_crop`` is ``random``): clips longer than ``clip_seconds``
(Clotho's are 15-30 s, CLAP's window 10 s) lose their crop augmentation. Turn the cache off
(``feature_cache: null``) to train on random crops.

Layout: ``<root>/audio/<key>/`` and ``<root>/text/<key>/`` each hold ``meta.json`` (the readable
key) and shards ``NAME.{states,mask,pooled,valid}.npy`` + ``NAME.keys.json`` (written last: a
shard without it is incomplete and ignored). Shards are append-only: entries whose file changed
stay on disk until the folder is deleted.

Building: missing entries are split across ranks (rank r takes missing[r::W]), each rank writes
its own shards, then all ranks wait (barrier) and re-read the index; a progress bar (rank 0)
shows the build. With the audio encoder cached the data module stops decoding audio
(``set_load_audio(False)``): batches then carry ``audio`` of shape (B, 0).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from coattn.batch import Batch
from coattn.features import SequenceFeatures
from coattn.store import FeatureStore, caption_key, encoder_key, file_key

log = logging.getLogger(__name__)


class _Comm:
    """Rank / world / barrier of a Lightning strategy, or of a single process."""

    def __init__(self, strategy=None):
        self.rank = int(getattr(strategy, "global_rank", 0)) if strategy is not None else 0
        self.world = int(getattr(strategy, "world_size", 1)) if strategy is not None else 1
        self._strategy = strategy

    def barrier(self, name: str) -> None:
        if self.world > 1:
            self._strategy.barrier(name)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True, leave=False)


class FeatureCache:
    """The frozen encoders' features of a data module's splits (module docstring).

    Args:
        root: cache folder (shared by runs: keys keep different encoders apart).
        audio_encoder, text_encoder: the model's encoders; only those with ``freeze`` are cached.
        sample_rate, clip_samples, crop: the audio window (the data module's ``eval_crop``).
        pad: how clips shorter than the window are padded (the data module's ``pad``).
        batch_size, num_workers: of the building passes.
    """

    def __init__(self, root: str | os.PathLike, audio_encoder: torch.nn.Module, text_encoder: torch.nn.Module,
                 sample_rate: int, clip_samples: int, crop: str = "start", pad: str = "repeat", batch_size: int = 16,
                 num_workers: int = 0, progress: bool = True):
        self.root = Path(root)
        self.audio_encoder, self.text_encoder = audio_encoder, text_encoder
        self.cache_audio = bool(getattr(audio_encoder, "freeze", False))
        self.cache_text = bool(getattr(text_encoder, "freeze", False))
        self.sample_rate, self.clip_samples, self.crop, self.pad = int(sample_rate), int(clip_samples), crop, pad
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self._audio_store: FeatureStore | None = None
        self._text_store: FeatureStore | None = None
        self._split_keys: dict[str, list[str]] = {}  # split name -> entry key per clip_index
        self._text_ready: set[str] = set()
        self.stats = {"audio_built": 0, "text_built": 0}

    # ---- stores (folders) keyed by encoder identity + weights (+ crop) ------------------------
    def audio_meta(self) -> dict:
        return {"kind": "audio", **encoder_key(self.audio_encoder), "sample_rate": self.sample_rate,
                "clip_samples": self.clip_samples, "crop": self.crop,
                "file_key": "resolved path + size + mtime_ns + fingerprint",
                **({"pad": self.pad} if self.pad != "repeat" else {})}  # repeat: the keys of caches made before

    def text_meta(self) -> dict:
        return {"kind": "text", **encoder_key(self.text_encoder), "entry_key": "sha1(caption)"}

    @property
    def audio_store(self) -> FeatureStore:
        if self._audio_store is None:
            meta = self.audio_meta()
            self._audio_store = FeatureStore.keyed(self.root / "audio", meta)
        return self._audio_store

    @property
    def text_store(self) -> FeatureStore:
        if self._text_store is None:  # after the tokenizer exists: its state is part of the identity
            meta = self.text_meta()
            self._text_store = FeatureStore.keyed(self.root / "text", meta)
        return self._text_store

    def _device(self, encoder: torch.nn.Module) -> torch.device:
        p = next(encoder.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ---- building -----------------------------------------------------------------------------
    def ensure_audio(self, split, comm: _Comm | None = None, name: str | None = None) -> list[str]:
        """Entry keys of every clip of ``split`` (a ``data_modules.splits.Split``), building the missing ones."""
        from torch.utils.data import DataLoader, Subset

        from data_modules.base import ignore_sigterm
        from data_modules.datasets import ClipDataset, collate

        comm = comm or _Comm()
        store = self.audio_store
        keys = [file_key(p) for p in split.paths]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        store.verify(list(first), warn=comm.rank == 0)  # damaged entries are forgotten, so rebuilt below
        missing = [i for k, i in first.items() if k not in store]
        comm.barrier("feature_cache_audio_scan")  # everyone scanned before anyone writes
        mine = missing[comm.rank::comm.world]
        if mine:
            clips = ClipDataset(split, self.sample_rate, self.clip_samples, self.crop, pad=self.pad)
            ds = Subset(clips, mine)
            loader = DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate,
                                worker_init_fn=ignore_sigterm if self.num_workers > 0 else None)
            enc, dev = self.audio_encoder, self._device(self.audio_encoder)
            bar = _progress(len(mine), f"feature cache: audio ({name or split.name})", self.progress and comm.rank == 0)

            def batches():
                with torch.no_grad():
                    for b in loader:
                        lengths = None if b.audio_lengths is None else b.audio_lengths.to(dev)
                        feats = enc(b.audio.to(dev)) if lengths is None else enc(b.audio.to(dev), lengths)
                        bar.update(len(b))
                        yield [keys[i] for i in b.clip_index.tolist()], feats, b.valid

            store.write_stream(batches())
            bar.close()
            self.stats["audio_built"] += len(mine)
        comm.barrier("feature_cache_audio_built")
        store.refresh()
        absent = [split.fnames[i] for i, k in enumerate(keys) if k not in store]
        if absent:
            raise RuntimeError(f"feature cache {store.root}: {len(absent)} clips still missing after the build "
                               f"(e.g. {absent[:3]}); did a rank fail?")
        if missing:
            log.info("feature cache: %d/%d %s clips encoded into %s", len(missing), len(first), name or split.name,
                     store.root)
        return keys

    def ensure_text(self, captions: Sequence[str], comm: _Comm | None = None, name: str = "") -> None:
        """Encode the captions not in the text store yet (shared across ranks)."""
        comm = comm or _Comm()
        store = self.text_store
        unique = list(dict.fromkeys(captions))
        store.verify([caption_key(c) for c in unique], warn=comm.rank == 0)
        missing = [c for c in unique if caption_key(c) not in store]
        comm.barrier("feature_cache_text_scan")
        mine = missing[comm.rank::comm.world]
        if mine:
            enc, bs = self.text_encoder, max(self.batch_size, 64)
            bar = _progress(len(mine), f"feature cache: text ({name})", self.progress and comm.rank == 0)

            def batches():
                with torch.no_grad():
                    for i in range(0, len(mine), bs):
                        chunk = mine[i:i + bs]
                        feats = enc(chunk)
                        bar.update(len(chunk))
                        yield [caption_key(c) for c in chunk], feats, torch.ones(len(chunk), dtype=torch.bool)

            store.write_stream(batches())
            bar.close()
            self.stats["text_built"] += len(mine)
        comm.barrier("feature_cache_text_built")
        store.refresh()
        if missing:
            log.info("feature cache: %d/%d %s captions encoded into %s", len(missing), len(unique), name, store.root)

    # ---- reading ------------------------------------------------------------------------------
    def audio_features(self, keys: Sequence[str]) -> tuple[SequenceFeatures, torch.Tensor]:
        return self.audio_store.get(keys)

    def text_features(self, captions: Sequence[str]) -> SequenceFeatures:
        """Cached token features; captions not in the cache (e.g. a paraphrase drawn for the first
        time) are encoded now, in the same call, and not stored."""
        store = self.text_store
        keys = [caption_key(c) for c in captions]
        hit = [i for i, k in enumerate(keys) if k in store]
        if len(hit) == len(keys):
            return store.get(keys)[0]
        miss = [i for i, k in enumerate(keys) if k not in store]
        with torch.no_grad():
            fresh = self.text_encoder([captions[i] for i in miss]).to("cpu")
        parts = [fresh] if not hit else [store.get([keys[i] for i in hit])[0], fresh]
        merged = SequenceFeatures.cat(parts)
        order = torch.argsort(torch.tensor(hit + miss))
        return merged.index(order)


class ModuleFeatureCache:
    """The glue the LightningModule uses: picks the split of each batch, builds lazily on the first
    batch of a split (after checkpoints are restored and the tokenizer exists) and fills the
    batch's ``audio_features`` / ``text_features`` (and the cached ``valid``)."""

    def __init__(self, root: str, model, datamodule, strategy=None):
        self.dm, self.strategy = datamodule, strategy
        self.cache = FeatureCache(root, model.audio_encoder, model.text_encoder, datamodule.sample_rate,
                                  datamodule.num_samples, datamodule.eval_crop, getattr(datamodule, "pad", "repeat"),
                                  batch_size=datamodule.eval_batch_size, num_workers=datamodule.num_workers)
        if self.cache.cache_audio:
            datamodule.set_load_audio(False)
            if getattr(datamodule, "train_crop", "start") == "random":
                log.info("feature cache: training reads the features of the %r crop (a random crop cannot be "
                         "cached); set model.feature_cache: null to train on random crops", datamodule.eval_crop)
        if not (self.cache.cache_audio or self.cache.cache_text):
            log.warning("model.feature_cache is set but neither encoder is frozen (freeze: true): nothing is cached")

    @property
    def active(self) -> bool:
        return self.cache.cache_audio or self.cache.cache_text

    def _split_name(self, trainer) -> str | None:
        if trainer.training:
            return "train"
        if trainer.sanity_checking or trainer.validating:
            return "val"
        if trainer.testing or trainer.predicting:  # the data module predicts on the test split
            return "test"
        return None

    def _ensure(self, split_name: str) -> None:
        comm = _Comm(self.strategy)
        if self.cache.cache_audio and split_name not in self.cache._split_keys:
            self.cache._split_keys[split_name] = self.cache.ensure_audio(self.dm.split(split_name), comm, split_name)
        if self.cache.cache_text and split_name not in self.cache._text_ready:
            captions = [c for caps in self.dm.split(split_name).captions for c in caps]
            if split_name == "train" and getattr(self.dm, "augment_prob", 0) > 0:
                captions += [p for ps in self.dm.paraphrases().values() for p in ps]
            self.cache.ensure_text(captions, comm, split_name)
            self.cache._text_ready.add(split_name)

    def attach(self, batch: Batch, trainer) -> Batch:
        split_name = self._split_name(trainer)
        if split_name is None or not self.active:
            return batch
        self._ensure(split_name)
        device = batch.clip_index.device
        changes = {}
        if self.cache.cache_audio:
            keys = self.cache._split_keys[split_name]
            idx = batch.clip_index.tolist()
            fnames = self.dm.split(split_name).fnames
            if any(i >= len(fnames) for i in idx) or [fnames[i] for i in idx] != list(batch.fnames):
                if batch.audio.numel() > 0:  # another loader (e.g. a folder to index): run the encoders
                    return batch
                raise RuntimeError(f"feature cache: batch clips {batch.fnames[:3]} are not clips {idx[:3]} of the "
                                   f"{split_name} split; the loader is not the data module's")
            feats, valid = self.cache.audio_features([keys[i] for i in idx])
            changes.update(audio_features=feats.to(device), valid=valid.to(device))
        if self.cache.cache_text:
            changes["text_features"] = self.cache.text_features(batch.captions).to(device)
        return batch.replace(**changes)
