"""``FeatureStore``: encoder outputs under string keys, on disk, read memory-mapped; the one store
behind the training feature cache (coattn/train/feature_cache.py) and ``coattn search``'s index.

Layout of a store folder: ``meta.json`` (the readable key of what is stored, e.g. which encoder)
and shards ``NAME.{states,mask,pooled,valid}.npy`` + ``NAME.keys.json``. Each part is written
atomically and the keys file last: a shard without it is incomplete (an interrupted build) and is
ignored. Shards are append-only; ``compact`` drops the entries no live key points to.

Damage heals: a shard whose files cannot be read or disagree in length (a truncated copy, a full
disk, a binary ``keys.json``) is reported in one warning naming the file and removed, so its
entries count as missing and the caller rebuilds them; a damaged ``meta.json`` is rewritten.
Contents are checked too: each shard records a CRC-32 per entry (``NAME.sums.json``, of the
entry's states, mask, pooled and valid bytes) when it is written, and ``verify`` (which the
feature cache and ``coattn search`` call on the entries they are about to use) recomputes them:
an entry whose bytes changed (bit rot, a bad copy, a program writing into the ``.npy``) is
forgotten with one warning and rebuilt. Shards written before the sums existed are not checked.
``verify`` also warns (once, counting them) when valid entries hold constant features (all zeros,
say): not damage, so kept, but the mark of an encoder bug worth a look. Of two entries under one
key, the newer shard's wins (a rebuilt entry replaces a damaged one).

Keys (any change is a miss):

    encoder_key(encoder)  ``encoder.identity()`` (config, checkpoint file, tokenizer...) + a SHA-1 of
                          its weights, so a fine-tuned, then frozen model never reads another's features
    file_key(path)        resolved path + size + mtime (ns) + ``coattn.io.file_fingerprint`` (SHA-1
                          of 3 blocks of 4 KiB: start, middle, end): a file replaced by another of the
                          same size and mtime (``cp -p``, ``rsync -t``, an archive) is a miss. Not a
                          full hash: that would read Clotho's 7 GB on every run; the 3 blocks cost
                          about 12 KiB read per file (``benchmarks/file_key.py``). An edit confined to
                          bytes outside those blocks that keeps size and mtime is not seen
    caption_key(text)     SHA-1 of the caption string
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from coattn.features import SequenceFeatures
from coattn.io import atomic_write, atomic_write_text, file_fingerprint, weights_digest

log = logging.getLogger(__name__)

PARTS = ("states", "mask", "pooled", "valid")
SHARD_ROWS = 2048  # entries per shard: a Clotho clip is 32 x 768 floats = 96 KB, so ~200 MB per shard


def sha1_of(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_key(path: str | os.PathLike) -> str:
    """Entry key of an audio file: resolved path + size + mtime + a fingerprint of 3 blocks of its
    content (module docstring: why not a full hash)."""
    p = Path(path).resolve()
    st = p.stat()
    return sha1_of([str(p), st.st_size, st.st_mtime_ns, file_fingerprint(p)])


def row_sums(parts: dict[str, np.ndarray], rows: Sequence[int] | None = None) -> list[int]:
    """CRC-32 of each entry (row) of a shard's parts: its states, mask, pooled and valid bytes."""
    out = []
    for i in range(len(parts["valid"])) if rows is None else rows:
        crc = 0
        for p in PARTS:
            crc = zlib.crc32(np.ascontiguousarray(parts[p][i]).tobytes(), crc)
        out.append(crc)
    return out


def caption_key(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


def encoder_key(encoder: torch.nn.Module) -> dict:
    """What identifies an encoder's outputs: its ``identity()`` and a digest of its weights."""
    return {"identity": encoder.identity(), "weights": weights_digest(encoder)}


class FeatureStore:
    """``SequenceFeatures`` rows (+ a valid flag) under string keys (module docstring). Rows of one
    shard share a sequence length; ``get`` trims/pads to the longest real length of the rows it
    returns (what an encoder called on those items alone returns)."""

    def __init__(self, root: str | os.PathLike, meta: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if meta is not None:
            self._ensure_meta(meta)
        self._shards: dict[str, dict[str, np.ndarray]] = {}
        self._keys: dict[str, list[str]] = {}
        self._index: dict[str, tuple[str, int]] = {}
        self._sums: dict[str, list[int] | None] = {}  # shard -> CRC-32 per row (None: written before sums)
        self._damaged: set[tuple[str, int]] = set()  # (shard, row) whose bytes no longer match their sum
        self._verified: set[str] = set()  # keys whose current entry verified
        self.healed: list[str] = []  # shards found damaged and removed (their entries are missing again)
        self.refresh()

    @classmethod
    def keyed(cls, parent: str | os.PathLike, meta: dict) -> "FeatureStore":
        """The store of ``meta`` under ``parent``: one folder per distinct meta (the first 20 hex digits of its
        SHA-1), so a change of encoder, weights or preprocessing is another folder, never a mixed one."""
        return cls(Path(parent) / sha1_of(meta)[:20], meta)

    def _ensure_meta(self, meta: dict) -> None:
        path = self.root / "meta.json"
        if path.is_file():
            try:
                if isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                    return
                why = "not a JSON object"
            except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
                why = type(exc).__name__
            log.warning("feature store %s: damaged %s (%s): rewritten", self.root, path, why)
        atomic_write_text(path, json.dumps(meta, indent=1, sort_keys=True, default=str))

    def _read_shard(self, name: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """The keys and memory-mapped parts of a shard; ValueError naming the damaged file."""
        kf = f"{name}.keys.json"
        try:
            keys = json.loads((self.root / kf).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{kf}: {type(exc).__name__}") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{kf} is not a list of strings")
        parts = {}
        for p in PARTS:
            try:
                parts[p] = np.load(self.root / f"{name}.{p}.npy", mmap_mode="r")
            except (OSError, ValueError, EOFError) as exc:
                raise ValueError(f"{name}.{p}.npy: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                 ) from None
        bad = [f"{name}.{p}.npy" for p, a in parts.items() if a.ndim == 0 or a.shape[0] != len(keys)]
        if bad:
            raise ValueError(f"{kf} lists {len(keys)} keys, but {', '.join(bad)} hold another number of rows")
        sums = None
        if (self.root / f"{name}.sums.json").is_file():
            try:
                sums = json.loads((self.root / f"{name}.sums.json").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{name}.sums.json: {type(exc).__name__}") from None
            if not isinstance(sums, list) or len(sums) != len(keys) or not all(isinstance(x, int) for x in sums):
                raise ValueError(f"{name}.sums.json does not hold one checksum per key")
        self._sums[name] = sums
        return keys, parts

    def refresh(self) -> None:
        """Pick up shards written since (by this or another process); heal damaged ones."""
        for kf in sorted(self.root.glob("*.keys.json")):
            name = kf.name[: -len(".keys.json")]
            if name in self._shards:
                continue
            try:
                keys, parts = self._read_shard(name)
            except (OSError, ValueError) as exc:
                self._remove(name, why=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            self._shards[name], self._keys[name] = parts, keys
            for i, k in enumerate(keys):  # shard names sort by write time: the newest entry of a key wins
                self._index[k] = (name, i)
                self._verified.discard(k)

    def _remove(self, name: str, why: str) -> None:
        log.warning("feature store %s: shard %s is damaged (%s): removed; its entries will be rebuilt",
                    self.root, name, why)
        self.healed.append(name)
        for f in self.root.glob(f"{name}.*"):
            f.unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def write(self, keys: Sequence[str], feats: SequenceFeatures, valid: torch.Tensor | None = None) -> str:
        """One new shard holding ``feats`` row i under ``keys[i]``; atomic (keys file written last)."""
        if len(keys) != len(feats):
            raise ValueError(f"{len(keys)} keys for {len(feats)} rows")
        valid = torch.ones(len(keys), dtype=torch.bool) if valid is None else valid
        arrays = {"states": feats.states.detach().float().cpu().numpy(), "mask": feats.mask.cpu().numpy(),
                  "pooled": feats.pooled.detach().float().cpu().numpy(), "valid": valid.cpu().numpy()}
        name = f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        for part, arr in arrays.items():
            atomic_write(self.root / f"{name}.{part}.npy", lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))
        atomic_write_text(self.root / f"{name}.sums.json", json.dumps(row_sums(arrays)))
        atomic_write_text(self.root / f"{name}.keys.json", json.dumps(list(keys)))
        self.refresh()
        return name

    def verify(self, keys: Sequence[str], warn: bool = True) -> list[str]:
        """Check the entries of ``keys`` against the checksums written with them; a damaged entry is
        forgotten (``key in store`` is then False, so the caller rebuilds it) with one warning for all.
        Warns too when valid entries hold constant features. Returns the damaged keys."""
        todo: dict[str, list[tuple[int, str]]] = {}
        for k in dict.fromkeys(keys):
            if k in self._index and k not in self._verified:
                name, i = self._index[k]
                todo.setdefault(name, []).append((i, k))
        damaged, constant = [], []
        for name, entries in todo.items():
            parts, sums = self._shards[name], self._sums.get(name)
            for (i, k), crc in zip(entries, row_sums(parts, [i for i, _ in entries])):
                if sums is not None and crc != sums[i]:
                    damaged.append((k, name, i))
                    continue
                self._verified.add(k)
                states = parts["states"][i]
                if bool(parts["valid"][i]) and states.size and float(states.max()) == float(states.min()):
                    constant.append((k, float(states.max())))
        for k, name, i in damaged:
            self._damaged.add((name, i))
            del self._index[k]
        if damaged and warn:
            log.warning("feature store %s: %d entries damaged (their bytes no longer match the checksum written "
                        "with them, e.g. row %d of shard %s): forgotten; they are rebuilt", self.root, len(damaged),
                        damaged[0][2], damaged[0][1])
        if constant and warn:
            log.warning("feature store %s: %d of %d entries hold constant features (every value %g, e.g. key %s): "
                        "an encoder that returned zeros? delete %s to rebuild them", self.root, len(constant),
                        len(keys), constant[0][1], constant[0][0], self.root)
        return [k for k, _, _ in damaged]

    def write_stream(self, batches: Iterable[tuple[Sequence[str], SequenceFeatures, torch.Tensor]],
                     shard_rows: int = SHARD_ROWS) -> int:
        """Consume (keys, features, valid) batches and write a shard every ``shard_rows`` rows: bounded
        memory, and an interrupted build keeps its finished shards. Returns the rows written."""
        buf: list[tuple[Sequence[str], SequenceFeatures, torch.Tensor]] = []
        held = total = 0

        def flush() -> None:
            self.write([k for b in buf for k in b[0]], SequenceFeatures.cat([b[1] for b in buf]),
                       torch.cat([b[2] for b in buf]))

        for keys, feats, valid in batches:
            buf.append((list(keys), feats.to("cpu"), valid.cpu()))
            held += len(feats)
            if held >= shard_rows:
                flush()
                total, held, buf = total + held, 0, []
        if buf:
            flush()
        return total + held

    def get(self, keys: Sequence[str]) -> tuple[SequenceFeatures, torch.Tensor]:
        """Features and valid flags of ``keys`` (KeyError naming the first missing key)."""
        try:
            locs = [self._index[k] for k in keys]
        except KeyError as err:
            raise KeyError(f"feature store {self.root}: no entry {err.args[0]}") from None
        by_shard: dict[str, list[int]] = {}
        for pos, (name, _) in enumerate(locs):
            by_shard.setdefault(name, []).append(pos)
        n = len(keys)
        parts: dict[str, tuple[list[int], np.ndarray]] = {}
        length = 0
        for name, positions in by_shard.items():
            rows = np.asarray([locs[p][1] for p in positions])
            real = np.asarray(self._shards[name]["mask"][rows]).any(0).nonzero()[0]
            length = max(length, int(real[-1]) + 1 if len(real) else 0)
            parts[name] = (positions, rows)
        first = next(iter(self._shards.values())) if self._shards else None
        dim = first["states"].shape[-1] if first is not None else 0
        states = np.zeros((n, length, dim), np.float32)
        mask = np.zeros((n, length), bool)
        pooled = np.zeros((n, dim), np.float32)
        valid = np.zeros(n, bool)
        for name, (positions, rows) in parts.items():
            sh = self._shards[name]
            k = min(length, sh["states"].shape[1])
            states[positions, :k] = sh["states"][rows, :k]
            mask[positions, :k] = sh["mask"][rows, :k]
            pooled[positions] = sh["pooled"][rows]
            valid[positions] = sh["valid"][rows]
        feats = SequenceFeatures(torch.from_numpy(states), torch.from_numpy(mask), torch.from_numpy(pooled))
        return feats, torch.from_numpy(valid)

    def compact(self, live: set[str]) -> int:
        """Drop every entry whose key is not in ``live`` (files deleted or changed since): a shard
        without live keys is deleted, a shard with some is rewritten with its live rows only.
        Returns the number of entries dropped."""
        dropped = 0
        for name, keys in list(self._keys.items()):
            dead = [k for k in keys if k not in live]
            if not dead:
                continue
            keep = list(dict.fromkeys(k for k in keys if k in live and self._index.get(k, (None,))[0] == name))
            if keep:
                feats, valid = self.get(keep)
                self.write(keep, feats, valid)
            for f in self.root.glob(f"{name}.*"):
                f.unlink(missing_ok=True)
            del self._shards[name], self._keys[name]
            self._sums.pop(name, None)
            dropped += len(dead)
        if dropped:
            self._index = {}
            for name, keys in sorted(self._keys.items()):
                for i, k in enumerate(keys):
                    if (name, i) not in self._damaged:
                        self._index[k] = (name, i)
        return dropped
