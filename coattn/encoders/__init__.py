"""Audio and text encoders producing ``coattn.features.SequenceFeatures``.

Audio towers share ``coattn.encoders.base.AudioTower`` (sample_rate, clip_samples, num_frames,
frame_rate, out_dim, freeze, identity(), forward(waveform, lengths)).
"""
from __future__ import annotations

from coattn.encoders.aisfx import AisfxAudioEncoder
from coattn.encoders.audio import AUDIO_CONFIGS, ClapAudioEncoder
from coattn.encoders.base import AudioTower
from coattn.encoders.clap_checkpoint import load_clap_state_dict
from coattn.errors import CheckpointError
from coattn.encoders.text import HFTextEncoder, TextEncoder, TinyTextEncoder

__all__ = [
    "AUDIO_CONFIGS",
    "AisfxAudioEncoder",
    "AudioTower",
    "CheckpointError",
    "ClapAudioEncoder",
    "HFTextEncoder",
    "TextEncoder",
    "TinyTextEncoder",
    "load_clap_state_dict",
]
