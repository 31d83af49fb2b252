"""``MultiDataModule``: train on several datasets at once, evaluate on any of their evaluation splits.

    coattn fit  --config experiments/multi/clotho_audiocaps_wavcaps_iterating.yaml
    coattn test --config experiments/multi/train_clotho_test_audiocaps.yaml --ckpt_path CKPT

The field's best Clotho systems train on Clotho + AudioCaps + WavCaps (DCASE 2025 baseline: 27.8 /
31.0 / 35.2 mAP@10). This module holds one data module per dataset (``datasets: {name: {class_path:
..., init_args: ...}}``) and uses only their splits (files, layouts, exclude files, blacklists);
everything about loading (batch sizes, workers, sample rate, crops, train_items, seed, paraphrases)
is its own.

Training: the union of the ``train`` datasets' training splits. An epoch is ``steps_per_epoch``
batches (default: one pass over the union's item count); each item is drawn from dataset d with
probability ``weights[d]`` (normalised; default: proportional to its items, i.e. the plain union),
see ``WeightedEpochSampler``. Clip identity is global: clips of different datasets get distinct
``clip_index`` values unless they are the same recording (same identity key: ``audioset:<youtube
id>`` for AudioCaps and WavCaps' AudioSet_SL, ``freesound:<sound id>`` for WavCaps' FreeSound and
Clotho with its metadata files), which then share one id, so the loss never uses them as each
other's negatives. With ``exclude_eval_overlap`` (default) a training clip whose key occurs in any
dataset's val or test split is left out (the DCASE rule; WavCaps' blacklists do the same for
clips whose key cannot be matched here).

Evaluation: one loader per name in ``val`` / ``test``; the model logs ``val/<name>/t2a_mAP@10``,
``test/<name>/...`` and writes test files to ``results/test/<name>/``. Train on one dataset and
test on another by listing them (``train: [clotho]``, ``test: [audiocaps]``): cross-dataset
evaluation is a config. ``predict`` encodes the first ``test`` dataset.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from coattn.errors import ConfigError
from data_modules.base import SPLIT_ALIASES, AudioCaptionDataModule
from data_modules.datasets import ClipDataset, TrainDataset, WeightedEpochSampler
from data_modules.splits import Split

log = logging.getLogger("coattn.data")


class MultiDataModule(AudioCaptionDataModule):
    """Several datasets in one run (module docstring).

    Args:
        datasets: name -> data module (``data_modules.ClothoDataModule``, ``AudioCapsDataModule``,
            ``WavCapsDataModule``); names appear in metric names (``val/<name>/t2a_mAP@10``).
            Their loading options are ignored: this module's apply.
        train: datasets whose training split is trained on (default: those in ``weights``, else all).
        weights: name -> sampling weight of that dataset's training items (normalised to sum 1;
            default: proportional to each dataset's number of items).
        steps_per_epoch: training batches per epoch (the epoch's definition; default: the union's
            items // batch_size). Under DDP each rank takes its share.
        val: datasets whose validation split is evaluated (default: every dataset that publishes one).
        test: datasets whose test split ``coattn test`` evaluates (default: same rule).
        exclude_eval_overlap: leave out of training every clip whose identity key occurs in any
            dataset's val or test split.
        **kwargs: the shared options of ``AudioCaptionDataModule`` (batch sizes, workers, crops...).
    """

    def __init__(self, datasets: dict[str, AudioCaptionDataModule], train: list[str] | None = None,
                 weights: dict[str, float] | None = None, steps_per_epoch: int | None = None,
                 val: list[str] | None = None, test: list[str] | None = None, exclude_eval_overlap: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if not datasets:
            raise ConfigError("data datasets: name at least one dataset (name -> data module)")
        bad = [n for n in datasets if not re.fullmatch(r"[A-Za-z0-9_-]+", n)]
        if bad:
            raise ConfigError(f"data datasets: names {bad} must be letters, digits, '_' or '-' (they name metrics)")
        self.datasets = dict(datasets)
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        self.train = list(train) if train is not None else (list(self.weights) or list(self.datasets))
        self.val = list(val) if val is not None else self._publishing("val")
        self.test = list(test) if test is not None else self._publishing("test")
        for key, names in (("weights", list(self.weights)), ("train", self.train), ("val", self.val),
                           ("test", self.test)):
            unknown = [n for n in names if n not in self.datasets]
            if unknown:
                raise ConfigError(f"data {key}: unknown dataset(s) {unknown}; datasets are {list(self.datasets)}")
        odd = {k: v for k, v in self.weights.items() if not math.isfinite(v)}
        if odd:  # NaN passes `<= 0`, inf normalises every other weight to 0: both train on garbage silently
            raise ConfigError(f"data weights: {', '.join(f'{k}: {v}' for k, v in odd.items())} is not a finite number; "
                              "give each training dataset a positive finite weight (they are normalised to sum 1)")
        if self.weights and (set(self.weights) != set(self.train) or min(self.weights.values()) <= 0):
            raise ConfigError(f"data weights {self.weights}: give one positive weight per training dataset "
                              f"{self.train} (leave a dataset out of train instead of weighting it 0)")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"data steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch, self.exclude_eval_overlap = steps_per_epoch, exclude_eval_overlap
        self._clip_ids: list[int] = []  # global clip id of each clip of the union
        self._clip_groups: list[range] = []  # the union's clips of each training dataset
        self._item_groups: list[list[int]] = []  # the training items of each training dataset
        for name, dm in self.datasets.items():
            dm.report_prefix = f"{name}_"

    # -- names and splits -----------------------------------------------------------------------------
    def _publishing(self, split: str) -> list[str]:
        """The datasets that publish ``split`` (``EVAL_SPLITS``: not WavCaps)."""
        return [n for n, d in self.datasets.items() if split in d.EVAL_SPLITS]

    def eval_names(self, stage: str) -> list[str]:
        name = SPLIT_ALIASES.get(stage, stage)
        return {"val": self.val, "test": self.test, "predict": self.test[:1]}.get(name, [])

    def relevance(self, stage: str, index: int = 0) -> tuple[str, float | None] | None:
        names = self.eval_names(stage)
        return self.datasets[names[index]].relevance(stage) if index < len(names) else None

    def split_names(self) -> tuple[str, ...]:
        return tuple(s for s, names in (("train", self.train), ("val", self.val), ("test", self.test)) if names)

    def split(self, stage: str) -> Split:
        """train: the union; val / test / predict: the first listed dataset's split (what callbacks show)."""
        if stage not in SPLIT_ALIASES:
            raise ValueError(f"unknown split {stage!r}; use one of {sorted(SPLIT_ALIASES)}")
        if SPLIT_ALIASES[stage] == "train":
            return self._union()
        names = self.eval_names(stage)
        if not names:
            raise ConfigError(f"data: no dataset to {stage} on; list one in data {SPLIT_ALIASES[stage]}")
        return self.datasets[names[0]].split(stage)

    def _eval_keys(self) -> frozenset[str]:
        """Identity keys of every clip listed in any dataset's val or test split (rows, audio or not)."""
        keys: set[str] = set()
        for name, dm in self.datasets.items():
            for split in dm.EVAL_SPLITS:
                try:
                    source = dm.split_source(split)
                except (FileNotFoundError, ConfigError) as exc:
                    log.info("exclude_eval_overlap: %s %s split not checked (%s)", name, split, exc)
                    continue
                keys.update(source.keys.values())
        return frozenset(keys)

    def _union(self) -> Split:
        """The training datasets' splits end to end, with one global clip id per recording."""
        if "train" in self._splits:
            return self._splits["train"]
        if not self.train:
            raise ConfigError("data train: no dataset to train on")
        if self.exclude_eval_overlap:
            overlap = self._eval_keys()
            for name in self.train:
                self.datasets[name].train_exclude_keys = overlap
        union = Split("train", Path("."), [], [], [])
        ids: dict[str, int] = {}
        self._clip_ids, clip_groups, shared = [], [], 0
        for name in self.train:
            s = self.datasets[name].split("train")
            clip_groups.append(range(len(union), len(union) + len(s)))
            for f, path, caps in zip(s.fnames, s.paths, s.captions):
                key = s.keys.get(f) or f"{name}:{f}"  # no key: the clip is only itself
                shared += key in ids
                self._clip_ids.append(ids.setdefault(key, len(ids)))
                union.fnames.append(f"{name}/{f}")
                union.paths.append(path)
                union.captions.append(caps)
                union.keys[f"{name}/{f}"] = key
            if s.excluded:
                log.info("%s train split: %d clips excluded (exclude_file, blacklists, evaluation overlap)", name,
                         len(s.excluded))
        log.info("training on %s: %d clips, %d of them the same recording as a clip of an earlier dataset "
                 "(shared clip id)", "+".join(self.train), len(union), shared)
        self._clip_groups = clip_groups
        self._splits["train"] = union
        return union

    # -- datasets and loaders -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for dm in self.datasets.values():
            dm.trainer = self.trainer  # their missing-clip reports go to this run's log_dir
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",),
                  None: ("train", "val", "test")}[stage]
        for split in wanted:
            if split == "train":
                self._dataset("train")
            for name in self.eval_names(split):
                self._eval_dataset(split, name)
                if split != "predict":
                    self.datasets[name].check_relevance(split)

    def _dataset(self, name: str) -> Dataset:
        if name != "train":
            return self._eval_dataset(name, self.eval_names(name)[0])
        if "train" not in self._datasets:
            union = self._union()
            ds = TrainDataset(union, self.sample_rate, self.num_samples, self.train_items, self.train_crop,
                              self.paraphrases(), self.augment_prob, clip_ids=self._clip_ids)
            clip_of_item = [c for c, _ in ds.items]
            self._item_groups = [[i for i, c in enumerate(clip_of_item) if c in g] for g in self._clip_groups]
            self._datasets["train"] = self._reader_settings(ds)
        return self._datasets["train"]

    def _eval_dataset(self, stage: str, name: str) -> Dataset:
        split = "test" if SPLIT_ALIASES[stage] == "predict" else SPLIT_ALIASES[stage]
        key = f"{split}/{name}"
        if key not in self._datasets:
            ds = ClipDataset(self.datasets[name].split(split), self.sample_rate, self.num_samples, self.eval_crop)
            self._datasets[key] = self._reader_settings(ds)
        return self._datasets[key]

    def set_load_audio(self, enabled: bool) -> None:
        if not enabled:
            raise ConfigError("model.feature_cache is not supported with data_modules.MultiDataModule (training clip "
                              "ids are global across datasets); set model.feature_cache: null")
        super().set_load_audio(enabled)

    def sampler(self) -> WeightedEpochSampler:
        """The training order: ``steps_per_epoch`` x ``batch_size`` weighted draws (module docstring)."""
        ds = self._dataset("train")
        sizes = [len(g) for g in self._item_groups]
        weights = [self.weights[n] for n in self.train] if self.weights else [float(n) for n in sizes]
        empty = [n for n, size in zip(self.train, sizes) if size == 0]
        if empty:
            raise ConfigError(f"data train: dataset(s) {empty} have no usable training clip")
        steps = self.steps_per_epoch or max(1, len(ds) // self.batch_size)
        return WeightedEpochSampler(self._item_groups, weights, steps * self.batch_size, self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("train"), batch_size=self.batch_size, sampler=self.sampler(), drop_last=True,
                          **self._loader_kwargs())

    def _eval_loaders(self, stage: str) -> list[DataLoader]:
        return [DataLoader(self._eval_dataset(stage, n), batch_size=self.eval_batch_size, shuffle=False,
                           drop_last=False, **self._loader_kwargs()) for n in self.eval_names(stage)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("predict")
