"""Data modules for language-based audio retrieval (LightningCLI: ``data: {class_path: ...}``).

    data_modules.ClothoDataModule     Clotho v2.1 / v1 folder layout (or aac-datasets')
    data_modules.AudioCapsDataModule  AudioCaps v1 / 2.0 caption files + your audio copy (or aac-datasets')
    data_modules.WavCapsDataModule    WavCaps' per-source JSON files + audio, with its blacklists
    data_modules.MultiDataModule      several of the above: weighted training union, per-dataset evaluation
    data_modules.MomentDataModule     moment retrieval (Lighthouse JSONL: qid, query, vid, duration, relevant_windows)

All share ``AudioCaptionDataModule`` (base.py), which reads caption files into splits
(splits.py) and serves them through the datasets and samplers of datasets.py, where the batch
contract is documented; clips are read by ``coattn.audio``. Folder layouts: layouts.py.
"""
from __future__ import annotations

from coattn.audio import AudioReadError, fit_length, load_audio, load_clip
from data_modules.audiocaps import AudioCapsDataModule
from data_modules.base import AudioCaptionDataModule
from data_modules.clotho import ClothoDataModule
from data_modules.datasets import collate
from data_modules.moments import MomentDataModule
from data_modules.multi import MultiDataModule
from data_modules.splits import Split
from data_modules.wavcaps import WavCapsDataModule

__all__ = ["AudioCapsDataModule", "AudioCaptionDataModule", "AudioReadError", "ClothoDataModule", "MomentDataModule", "MultiDataModule",
           "Split", "WavCapsDataModule", "collate", "fit_length", "load_audio", "load_clip"]
