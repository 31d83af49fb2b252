"""Data modules for language-based audio retrieval (LightningCLI: ``data: {class_path: ...}``).

    data_modules.ClothoDataModule     Clotho v2.1 / v1 folder layout
    data_modules.AudioCapsDataModule  AudioCaps v1 / 2.0 caption files + your audio copy

Both share ``AudioCaptionDataModule`` (base.py), which reads caption files into splits
(splits.py) and serves them through the datasets and samplers of datasets.py, where the batch
contract is documented; clips are read by ``coattn.audio``.
"""
from __future__ import annotations

from coattn.audio import AudioReadError, fit_length, load_audio, load_clip
from data_modules.audiocaps import AudioCapsDataModule
from data_modules.base import AudioCaptionDataModule
from data_modules.clotho import ClothoDataModule
from data_modules.datasets import collate
from data_modules.splits import Split

__all__ = ["AudioCapsDataModule", "AudioCaptionDataModule", "AudioReadError", "ClothoDataModule", "Split", "collate",
           "fit_length", "load_audio", "load_clip"]
