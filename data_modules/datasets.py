"""What the loaders iterate: the clip reader, the datasets, ``collate`` and the training sampler.

Separate from the LightningDataModule so that code building its own loader over a ``Split``
(``coattn.train.feature_cache``) gets the same items and batches without the Lightning hooks.

Every loader yields a ``coattn.batch.Batch`` (its fields, shapes and meaning are documented
there; the LightningModule reads nothing else). ``set_load_audio(False)`` (a model with a feature
cache) skips decoding: ``audio`` is then (B, 0).

Evaluation loaders visit every clip exactly once, in split order (under DDP Lightning's
DistributedSampler pads the last batch with repeats: deduplicate on ``clip_index``). Training
items are (clip, caption) pairs, or clips with a random caption (``train_items="clip"``); the
sampler keeps the captions of one clip out of the same batch where it can (single process),
and ``clip_index`` lets the loss mask same-clip pairs wherever it cannot (DDP reshuffles).
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
from typing import Iterator, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from coattn.audio import AudioReadError, load_clip
from coattn.batch import Batch
from coattn.scenes import ClipScene, phrase_spans, window_fractions
from coattn.time_binding import SceneEvents
from data_modules.splits import Split

log = logging.getLogger("coattn.data")


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
        self.pad = "repeat"  # the data module's ``pad``: repeat (CLAP) or zeros (then masked)

    def read(self, clip: int, mode: str, generator: torch.Generator | None) -> tuple[torch.Tensor, bool, int]:
        """(waveform, readable, samples of the clip's own audio in it)."""
        if not self.load_audio:
            return torch.zeros(0), True, 0
        try:
            wave, real = load_clip(self.split.paths[clip], self.sample_rate, self.length, mode, generator, self.pad,
                                   return_length=True)
            return wave, True, real
        except AudioReadError as exc:
            self.skipped.add()
            log.warning("%s split: clip %d replaced by silence (%d so far; `coattn data-check` lists them all): %s",
                        self.split.name, clip, self.skipped.get(), exc)
            return torch.zeros(self.length), False, self.length


class TrainDataset(Dataset):
    """Training items; indexed by (item, draw) pairs from ``EpochSampler``.

    The draw (a 62-bit integer chosen in the main process) seeds the crop, the caption choice
    and the paraphrase choice, so an epoch is reproducible whatever the number of workers.
    ``clip_ids`` (one per clip of the split) replace the clip's position as its ``clip_index``:
    ``MultiDataModule`` gives one id to the same recording in several datasets, so the loss masks them.
    """

    def __init__(self, split: Split, sample_rate: int, length: int, items: Literal["caption", "clip"] = "caption",
                 crop: str = "random", paraphrases: dict[str, list[str]] | None = None, augment_prob: float = 0.0,
                 clip_ids: list[int] | None = None):
        self.split, self.items_mode, self.crop = split, items, crop
        self.clip_ids = clip_ids
        self.reader = _ClipReader(split, sample_rate, length)
        self.paraphrases, self.augment_prob = paraphrases or {}, augment_prob
        # event timings per clip (``set_scenes``; None: batches carry no ``events``)
        self.scenes: list[ClipScene | None] | None = None
        self.window_s, self._fits = length / sample_rate, {}
        if items == "caption":
            self.items = [(c, k) for c in range(len(split)) for k in range(len(split.captions[c]))]
        elif items == "clip":
            self.items = [(c, -1) for c in range(len(split))]
        else:
            raise ValueError(f"train_items must be 'caption' or 'clip', got {items!r}")

    def __len__(self) -> int:
        return len(self.items)

    def set_scenes(self, scenes: list[ClipScene | None] | None) -> None:
        """Each clip's ``ClipScene`` (``coattn.scenes.split_scenes``): items then carry their event timings as
        fractions of the window, and the event phrases of their caption; None turns it off."""
        self.scenes = scenes

    def _scene_item(self, clip: int, caption: str) -> tuple[list, list]:
        """(occurrences, phrase spans) of an item; empty when the clip has no scene or the window does not
        start at the clip's start (a random crop of a longer clip: its timings would be shifted)."""
        scene = self.scenes[clip]
        if scene is None:
            return [], []
        if self.crop != "start" and clip not in self._fits:
            import soundfile as sf
            try:
                self._fits[clip] = sf.info(str(self.split.paths[clip])).duration <= self.window_s + 1e-3
            except Exception:  # unreadable: the reader reports it; no timings
                self._fits[clip] = False
        if self.crop != "start" and not self._fits[clip]:
            return [], []
        return window_fractions(scene, self.window_s), phrase_spans(caption, scene)

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
        audio, ok, real = self.reader.read(clip, self.crop, generator)
        clip_id = clip if self.clip_ids is None else self.clip_ids[clip]
        item = {"audio": audio, "clip_index": clip_id, "fname": self.split.fnames[clip], "captions": [caption],
                "valid": ok, "length": real}
        if self.scenes is not None:
            item["scene"] = self._scene_item(clip, caption)
        return item


class ClipDataset(Dataset):
    """Evaluation items: one per clip with all its captions, deterministic crop."""

    def __init__(self, split: Split, sample_rate: int, length: int, crop: str = "start", pad: str = "repeat"):
        self.split, self.crop = split, crop
        self.reader = _ClipReader(split, sample_rate, length)
        self.reader.pad = pad

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, clip: int) -> dict:
        audio, ok, real = self.reader.read(clip, self.crop, None)
        return {"audio": audio, "clip_index": clip, "fname": self.split.fnames[clip],
                "captions": list(self.split.captions[clip]), "valid": ok, "length": real}


def collate(items: list[dict]) -> Batch:
    """Stack audio; flatten captions with the clip each one belongs to; ``audio_lengths`` only when a
    clip of the batch is shorter than its window (``pad: zeros``): None means every clip fills it."""
    audio = torch.stack([it["audio"] for it in items])
    lengths = [it.get("length", 0) for it in items]
    short = audio.shape[1] > 0 and any(0 < n < audio.shape[1] for n in lengths)
    return Batch(
        audio=audio,
        clip_index=torch.tensor([it["clip_index"] for it in items], dtype=torch.long),
        fnames=[it["fname"] for it in items],
        captions=[c for it in items for c in it["captions"]],
        caption_clip=torch.tensor([it["clip_index"] for it in items for _ in it["captions"]], dtype=torch.long),
        valid=torch.tensor([it["valid"] for it in items], dtype=torch.bool),
        audio_lengths=torch.tensor(lengths, dtype=torch.long) if short else None,
        events=SceneEvents.build([it["scene"][0] for it in items], [it["scene"][1] for it in items])
        if all("scene" in it for it in items) and items else None,
    )


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


class TwinEpochSampler(EpochSampler):
    """``EpochSampler`` that puts each clip's order twin (``twins[c]``: the clip with the same events in the
    reverse order, or None) in the same batch, so the B x B grid always holds it as a negative.

    Each round's clips are grouped into units (a twin pair whose clips both have a caption in the round,
    or one clip), the units shuffled and packed into batches of ``batch_size``: a pair that does not fit
    in the batch's last slot lets the next single clip go first; with no single clip left it is split
    (its second clip goes to the end of the epoch). Even batch sizes and many single clips split none.
    Clips without a twin are sampled as ``EpochSampler`` samples them (without its round-boundary swap:
    the loss masks same-clip pairs anyway).
    """

    def __init__(self, groups: list[list[int]], batch_size: int, twins: list[int | None], seed: int = 0):
        super().__init__(groups, batch_size, seed)
        self.twins = twins

    def order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, 5])
        per_clip = [list(rng.permutation(g)) for g in self.groups]
        units: list[list[int]] = []
        for r in range(max((len(g) for g in self.groups), default=0)):
            present = {c for c, g in enumerate(self.groups) if len(g) > r}
            seen: set[int] = set()
            mine = []
            for c in sorted(present):
                if c in seen:
                    continue
                t = self.twins[c]
                pair = [c, t] if t is not None and t in present and t not in seen else [c]
                seen.update(pair)
                mine.append(pair)
            units.extend([per_clip[c][r] for c in mine[i]] for i in rng.permutation(len(mine)))
        return self._pack(units)

    def _pack(self, units: list[list[int]]) -> list[int]:
        queue, seq, fill, B = list(units), [], 0, self.batch_size
        i = 0
        while i < len(queue):
            u = queue[i]
            if fill and len(u) > B - fill:  # a pair in the last slot: a single clip first, or split it
                j = next((k for k in range(i + 1, len(queue)) if len(queue[k]) <= B - fill), None)
                if j is not None:
                    queue.insert(i, queue.pop(j))
                else:
                    queue[i] = u[:B - fill]
                    queue.append(u[B - fill:])
                continue
            seq.extend(u)
            fill = (fill + len(u)) % B
            i += 1
        return seq


class WeightedEpochSampler(Sampler):
    """Training order of ``MultiDataModule``: ``num_items`` draws of (item, draw) pairs per epoch.

    Each draw picks dataset d with probability ``weights[d] / sum(weights)`` (independently, so the
    share of d in an epoch is binomial around its weight), then d's next item in a permutation of its
    items seeded by (seed, epoch, d), re-shuffled when used up: within an epoch an item repeats only
    once all of d's items were drawn. ``set_epoch`` (Lightning calls it) makes epochs resumable.
    Same-clip pairs in a batch are rare here and masked by the loss (``clip_index`` is global).
    """

    def __init__(self, groups: list[list[int]], weights: list[float], num_items: int, seed: int = 0):
        if len(groups) != len(weights) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per group with a positive sum, got {weights}")
        if any(w > 0 and not g for g, w in zip(groups, weights)):
            raise ValueError("a group with a positive weight has no items")
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.p = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def order(self, epoch: int) -> np.ndarray:
        which = np.random.default_rng([self.seed, epoch, 2]).choice(len(self.groups), size=self.num_items, p=self.p)
        out = np.empty(self.num_items, dtype=np.int64)
        for d, g in enumerate(self.groups):
            slots = np.flatnonzero(which == d)
            if len(slots):
                rng = np.random.default_rng([self.seed, epoch, 3, d])
                laps = -(-len(slots) // len(g))  # permutations needed to fill the slots
                out[slots] = np.concatenate([rng.permutation(g) for _ in range(laps)])[:len(slots)]
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        seq = self.order(epoch)
        draws = np.random.default_rng([self.seed, epoch, 1]).integers(0, 2 ** 62, size=len(seq))
        return iter(zip((int(i) for i in seq), (int(d) for d in draws)))
