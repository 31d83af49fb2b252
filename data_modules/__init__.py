"""Data modules for language-based audio retrieval (LightningCLI: ``data: {class_path: ...}``).

    data_modules.ClothoDataModule     Clotho v2.1 / v1 folder layout
    data_modules.AudioCapsDataModule  AudioCaps v1 / 2.0 caption files + your audio copy

Both share ``AudioCaptionDataModule`` (base.py): the audio path, the samplers and the batch
contract documented there.
"""
from __future__ import annotations

from data_modules.audio_io import AudioReadError, fit_length, load_audio, load_clip
from data_modules.audiocaps import AudioCapsDataModule
from data_modules.base import AudioCaptionDataModule, Split, collate
from data_modules.clotho import ClothoDataModule

__all__ = ["AudioCapsDataModule", "AudioCaptionDataModule", "AudioReadError", "ClothoDataModule", "Split", "collate",
           "fit_length", "load_audio", "load_clip"]
