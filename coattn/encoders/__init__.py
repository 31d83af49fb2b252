"""Audio and text encoders producing ``coattn.features.SequenceFeatures``."""
from __future__ import annotations

from coattn.encoders.audio import AUDIO_CONFIGS, ClapAudioEncoder
from coattn.encoders.clap_checkpoint import load_clap_state_dict
from coattn.errors import CheckpointError
from coattn.encoders.text import HFTextEncoder, TextEncoder, TinyTextEncoder

__all__ = [
    "AUDIO_CONFIGS",
    "CheckpointError",
    "ClapAudioEncoder",
    "HFTextEncoder",
    "TextEncoder",
    "TinyTextEncoder",
    "load_clap_state_dict",
]
