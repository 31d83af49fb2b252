"""``AudioCaptionDataModule``: the base class of the Clotho, AudioCaps, WavCaps and multi-dataset modules.

Subclasses only say where clips and captions are (``split_source``); this class owns the
Lightning side they share: stage names to splits, the exclude file, the missing-clip reports,
and building the loaders. Its ``state_dict`` (saved in every checkpoint) is where training stands
in the epoch, so that a fit resumed from a mid-epoch checkpoint (a SIGTERM, ``every_n_train_steps``)
trains the rest of that epoch in the original order instead of starting its order again.
Reading caption files and path safety live in ``data_modules.splits``;
the datasets, the sampler and the batch contract in ``data_modules.datasets``.
"""
from __future__ import annotations

import itertools
import logging
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from coattn.errors import ConfigError, DataError
from data_modules.datasets import ClipDataset, EpochSampler, TrainDataset, collate
from data_modules.splits import Split, SplitSource, describe_rejections, make_split

log = logging.getLogger("coattn.data")

SPLIT_ALIASES = {"train": "train", "fit": "train", "val": "val", "validate": "val", "validation": "val",
                 "test": "test", "predict": "predict"}


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM: ``kill -TERM -<group>`` (Slurm, Kubernetes) reaches them too, and
    a worker dying of it makes the main process raise "DataLoader worker ... killed by signal" mid-step.
    The main process stops cleanly instead (callbacks.signals) and shuts its workers down itself;
    workers of a main process that died exit on their own (PyTorch's parent watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Resumed(Sampler):
    """The training sampler of a resumed fit: starts at ``epoch`` and skips the first ``skip`` items once
    (the batches trained before the checkpoint); its length stays the epoch's, as Lightning counts."""

    def __init__(self, inner: EpochSampler, epoch: int, skip: int):
        self.inner, self.skip = inner, skip
        inner.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)


class AudioCaptionDataModule(pl.LightningDataModule):
    """Shared base of ``ClothoDataModule``, ``AudioCapsDataModule``, ``WavCapsDataModule``, ``MultiDataModule``.

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
        relevance_files: DCASE 2025 multi-relevance files per evaluation split, e.g. ``{test:
            metadata_eval.csv}`` (``coattn.relevance``): test then also reports mAP@16 and R@k with
            several relevant clips per query. Without one, one relevant clip per caption (the default).
        relevance_threshold: for graded files (``caption,file_name,relevance``): pairs scoring at
            least this are relevant. The official 2025 file is already binary (no threshold).
        follow_symlinks: accept clips that are symlinks to files outside their audio folder (a
            dataset made of per-file links into a shared pool). Off by default: names in a caption
            file must not reach outside the folder. Names must be relative and free of ``..``
            either way; a linked *folder* works without this.
        pad: how clips shorter than ``clip_seconds`` are filled: ``repeat`` (CLAP's repeat-pad) or
            ``zeros`` (silence, masked out of the model's frames). Repeating blurs order ("A then B"
            becomes "A B A B"), so order-aware models use ``zeros``.
        twin_batches: put each training clip's order twin (``<root>/synth_metadata.json`` ``"twin"``) in the
            same batch (``data_modules.datasets.TwinEpochSampler``), so the B x B loss always ranks the clip
            against the one clip with the same events in the reverse order; clips without a twin are
            sampled as usual, and without twins in the metadata this is the usual sampler (a warning says
            so). One process: under DDP Lightning re-shuffles the items over ranks.
    """

    # The evaluation splits the dataset publishes (WavCaps: none; MultiDataModule validates on these).
    EVAL_SPLITS: tuple[str, ...] = ("val", "test")

    def __init__(self, batch_size: int = 32, eval_batch_size: int = 16, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, sample_rate: int = 48000,
                 clip_seconds: float = 10.0, train_crop: Literal["random", "start", "centre"] = "random",
                 eval_crop: Literal["start", "centre"] = "start", train_items: Literal["caption", "clip"] = "caption",
                 seed: int = 0, augmentation_file: str | None = None, augment_prob: float = 0.0,
                 exclude_file: str | None = None, report_dir: str | None = None,
                 relevance_files: dict[str, str] | None = None, relevance_threshold: float | None = None,
                 follow_symlinks: bool = False, pad: Literal["repeat", "zeros"] = "repeat", twin_batches: bool = False):
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("num_workers", num_workers, 0)):
            if value < low:
                raise ConfigError(f"{key} must be >= {low}, got {value}")
        if pad not in ("repeat", "zeros"):
            raise ConfigError(f"pad must be 'repeat' or 'zeros', got {pad!r}")
        self.pad = pad
        if not 0.0 <= augment_prob <= 1.0:
            raise ConfigError(f"augment_prob must be in [0, 1], got {augment_prob}")
        if augment_prob > 0 and not augmentation_file:
            raise ConfigError("augment_prob > 0 needs augmentation_file (written by `coattn augment`)")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.sample_rate, self.clip_seconds = sample_rate, clip_seconds
        self.train_crop, self.eval_crop, self.train_items = train_crop, eval_crop, train_items
        self.seed = seed
        self.augmentation_file, self.augment_prob = augmentation_file, augment_prob
        self.exclude_file, self.report_dir = exclude_file, report_dir
        unknown = set(relevance_files or {}) - {"val", "test"}
        if unknown:
            raise ConfigError(f"data relevance_files: unknown split(s) {sorted(unknown)}; use val and/or test")
        self.relevance_files, self.relevance_threshold = dict(relevance_files or {}), relevance_threshold
        self.follow_symlinks, self.twin_batches = follow_symlinks, twin_batches
        self._scene_events = False  # set_scene_events: training batches carry event timings
        self._exclude: frozenset[str] | None = None
        # identity keys to leave out of training (MultiDataModule: clips of any dataset's evaluation splits)
        self.train_exclude_keys: frozenset[str] = frozenset()
        self.report_prefix = ""  # MultiDataModule: "<dataset>_" so the datasets' reports do not collide
        self._splits: dict[str, Split] = {}
        self._datasets: dict[str, Dataset] = {}
        self._paraphrases: dict[str, list[str]] | None = None
        self._load_audio = True
        self._resume: dict[str, int] | None = None  # from a checkpoint: the epoch to start and batches done in it

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
            s = make_split(source, self.excluded_names(), self.excluded_keys(name), self.follow_symlinks)
            if len(s) == 0:
                why = f" ({describe_rejections(s.why_rejected)})" if s.rejected else ""
                raise DataError(f"{name} split has no usable clips in {s.audio_dir} (listed in {source.csv}: "
                                f"{len(source.rows)} rows; {len(s.missing)} missing, {len(s.rejected)} rejected{why}, "
                                f"{len(s.excluded)} excluded); check root and the audio folder options")
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

    def excluded_keys(self, name: str) -> frozenset[str]:
        """Identity keys (``SplitSource.keys``) to leave out of split ``name`` (WavCaps adds its blacklists)."""
        return self.train_exclude_keys if name == "train" else frozenset()

    def eval_names(self, stage: str) -> list[str]:
        """Names of the evaluation loaders of a stage, in loader order; [] = one unnamed loader (``val/...``)."""
        return []

    def relevance(self, stage: str, index: int = 0) -> tuple[str, float | None] | None:
        """(multi-relevance file, threshold) of the split behind ``stage`` (loader ``index``), if it has one."""
        path = self.relevance_files.get(SPLIT_ALIASES.get(stage, stage))
        return (path, self.relevance_threshold) if path else None

    def _report(self, s: Split, source: SplitSource) -> None:
        """Once per split (rank 0): a warning with counts, and the lists written to files."""
        if not (s.missing or s.rejected) or getattr(self.trainer, "global_rank", 0) != 0:
            if s.excluded:
                log.info("%s split: %d clips left out (exclude_file %s, excluded keys)", s.name, len(s.excluded),
                         self.exclude_file)
            return
        out = Path(self.report_dir or getattr(self.trainer, "log_dir", None) or
                   Path(tempfile.gettempdir()) / "coattn-data-reports")
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for kind, names in (("missing", s.missing), ("rejected", s.rejected)):
            if names:
                f = out / f"{kind}_{self.report_prefix}{s.name}.txt"
                f.write_text("".join(n + "\n" for n in names), encoding="utf-8")
                files.append(str(f))
        total = len(s) + len(s.missing) + len(s.rejected) + len(s.excluded)
        why = f" ({describe_rejections(s.why_rejected)})" if s.rejected else ""
        log.warning("%s split: using %d of %d clips listed in %s: %d missing from %s, %d rejected%s, "
                    "%d excluded; lists in %s", s.name, len(s), total, source.csv, len(s.missing), s.audio_dir,
                    len(s.rejected), why, len(s.excluded), ", ".join(files))

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
            if stage != "predict":
                self.check_relevance(name)

    def check_relevance(self, name: str) -> None:
        """Read the relevance file of split ``name`` (if any) and match it to the split now, at set-up: a bad
        file (missing, unparsable, repeated rows, NaN, unknown captions or clips) is a one-line DataError
        naming the file and line before any pair is scored, not after."""
        path = self.relevance_files.get(SPLIT_ALIASES.get(name, name))
        if not path:
            return
        from coattn.relevance import check_relevance

        captions, _ = self.split_captions(name)
        check_relevance(path, self.relevance_threshold, captions, self.split_clips(name))

    def _dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            if name == "train":
                self._datasets[name] = self._reader_settings(TrainDataset(
                    self.split(name), self.sample_rate, self.num_samples, self.train_items, self.train_crop,
                    self.paraphrases(), self.augment_prob))
            else:
                self._datasets[name] = self.clip_dataset(name)
        return self._datasets[name]

    def clip_dataset(self, stage: str) -> ClipDataset:
        """Every clip of a split (``train`` too) as evaluation items, read as evaluation reads them:
        this module's deterministic crop, padding and decode settings (``coattn probe`` uses it)."""
        return self._reader_settings(ClipDataset(self.split(stage), self.sample_rate, self.num_samples,
                                                 self.eval_crop))

    def _reader_settings(self, ds: Dataset) -> Dataset:
        """What every dataset's clip reader takes from the module: decode at all, and how to pad."""
        ds.reader.load_audio, ds.reader.pad = self._load_audio, self.pad
        return ds

    def scene_metadata(self) -> dict | None:
        """``<root>/synth_metadata.json`` parsed (``coattn.scenes``), or None without a root or the file."""
        if not hasattr(self, "_scene_meta"):
            from coattn.scenes import read_metadata
            self._scene_meta = read_metadata(getattr(self, "root", None))
        return self._scene_meta

    def set_scene_events(self, enabled: bool) -> bool:
        """Training batches carry each clip's event timings and each caption's event phrases (``Batch.events``;
        the loss's ``swap_negatives`` and ``grounding_weight`` ask for them). Returns whether any training clip
        has timings (False: nothing to carry)."""
        from coattn.scenes import split_scenes

        self._scene_events = enabled
        ds = self._dataset("train")
        if not enabled:
            ds.set_scenes(None)
            return False
        split = self.split("train")
        scenes = split_scenes(self.scene_metadata(), split.audio_dir.name, list(split.fnames))
        ds.set_scenes(scenes if any(s is not None for s in scenes) else None)
        return ds.scenes is not None

    def _train_sampler(self, ds: Dataset) -> Sampler:
        if self.twin_batches:
            from coattn.scenes import split_twins
            from data_modules.datasets import TwinEpochSampler

            split = self.split("train")
            twins = split_twins(self.scene_metadata(), split.audio_dir.name, list(split.fnames))
            if any(t is not None for t in twins):
                return TwinEpochSampler(ds.groups(), self.batch_size, twins, self.seed)
            log.warning("data.twin_batches: the training clips have no order twins in %s/synth_metadata.json; "
                        "sampling as usual", getattr(self, "root", "?"))
        return EpochSampler(ds.groups(), self.batch_size, self.seed)

    def set_load_audio(self, enabled: bool) -> None:
        """Decode clips (default) or yield ``audio`` of shape (B, 0): the model sets False when its
        feature cache supplies the audio features (``coattn.train.feature_cache``). Call before iterating."""
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
                "persistent_workers": self.persistent_workers, "collate_fn": collate,
                "worker_init_fn": ignore_sigterm if self.num_workers > 0 else None}

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        sampler: Sampler = self._train_sampler(ds)
        resume, self._resume = self._resume, None  # once: a reloaded loader starts its epochs whole
        if resume:
            # Set the epoch now: with workers, the first iterator is made (and prefetches) before Lightning's
            # set_epoch. Under DDP Lightning re-permutes the order anyway, so there is nothing to skip.
            world = getattr(self.trainer, "world_size", 1)
            sampler = _Resumed(sampler, resume["train_epoch"], resume["train_batches_done"] * self.batch_size
                               if world == 1 else 0)
            if world == 1:  # Lightning cannot see that this loader resumes mid-epoch (it is, through the sampler)
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=len(ds) > self.batch_size,
                          **self._loader_kwargs())

    def state_dict(self) -> dict[str, Any]:
        """Where training stands: the epoch to continue and the batches of it already trained (Lightning's
        own count, which its loops resume from). Saved in every checkpoint of a fit."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit" or not trainer.num_training_batches:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # an epoch-end checkpoint: the next epoch starts whole
            return {"train_epoch": trainer.current_epoch + 1, "train_batches_done": 0}
        return {"train_epoch": trainer.current_epoch, "train_batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict) if state_dict.get("train_epoch") is not None else None

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(self._dataset(name), batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
