"""The shared audio path: read (soundfile) -> mono -> resample (torchaudio) -> crop or repeat-pad.

torchaudio.load needs FFmpeg (absent on our machines), so files are read with soundfile, which
handles WAV, FLAC and OGG. Every failure becomes an ``AudioReadError`` naming the file, so the
data modules can substitute silence and count the clip instead of killing a DataLoader worker.
It lives in the library, free of Lightning, so ``coattn search`` and notebooks read clips exactly
as training does without importing the data modules.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

CropMode = Literal["random", "start", "centre"]
PadMode = Literal["repeat", "zeros"]
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # what libsndfile (>= 1.1) reads: indexed and checked

# One Resample module per (source, target) rate in each process: building the windowed-sinc
# kernel costs ~1 ms and Clotho mixes 44.1 and 48 kHz files, so rebuilding per clip adds up.
_RESAMPLERS: dict[tuple[int, int], torchaudio.transforms.Resample] = {}


class AudioReadError(RuntimeError):
    """A clip that cannot be used: unreadable, empty, or holding NaN/Inf samples."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot use audio file {self.path!r}: {reason}")


def resampler(orig_sr: int, target_sr: int) -> torchaudio.transforms.Resample:
    key = (int(orig_sr), int(target_sr))
    if key not in _RESAMPLERS:
        _RESAMPLERS[key] = torchaudio.transforms.Resample(*key)
    return _RESAMPLERS[key]


def _to_mono_tensor(data: np.ndarray, path) -> torch.Tensor:
    if data.ndim == 2:  # soundfile gives (frames, channels); average channels (CLAP trains on mono)
        data = data.mean(axis=1)
    if data.size == 0:
        raise AudioReadError(path, "zero-length audio (no samples)")
    wave = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if not torch.isfinite(wave).all():
        raise AudioReadError(path, "NaN or Inf samples")
    return wave


def load_audio(path: str | Path, target_sr: int = 48000) -> torch.Tensor:
    """The whole clip as float32 mono at ``target_sr``: (S,)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, OSError...
        raise AudioReadError(path, f"{type(exc).__name__}: {exc}") from exc
    wave = _to_mono_tensor(data, path)
    return wave if sr == target_sr else resampler(sr, target_sr)(wave)


def resampled_length(frames: int, orig_sr: int, target_sr: int) -> int:
    """Samples torchaudio's resample returns for ``frames`` input samples.

    Mirrors torchaudio's own rounding, which goes through float32: ceil(160 * 1062528 / 147)
    is 1156494 exactly but 1156493 in float32, so exact integer maths would be off by one.
    """
    if orig_sr == target_sr:
        return frames
    g = math.gcd(orig_sr, target_sr)
    return int(torch.ceil(torch.as_tensor(target_sr // g * frames / (orig_sr // g))))


def crop_offset(n: int, length: int, mode: CropMode, generator: torch.Generator | None = None) -> int:
    """Start of a ``length`` window inside ``n`` samples (0 when the clip is not longer)."""
    if n <= length:
        return 0
    if mode == "random":
        return int(torch.randint(0, n - length + 1, (1,), generator=generator))
    if mode == "centre":
        return (n - length) // 2
    if mode == "start":
        return 0
    raise ValueError(f"crop mode must be 'random', 'start' or 'centre', got {mode!r}")


def fit_length(wave: torch.Tensor, length: int, mode: CropMode = "random",
               generator: torch.Generator | None = None, pad: PadMode = "repeat") -> torch.Tensor:
    """Crop a longer clip to ``length`` samples, or pad a shorter one.

    ``pad: repeat`` is CLAP's "repeatpad": tile the clip a whole number of times, then zero-pad the
    remainder (a 4 s clip in a 10 s window = 2 copies + 2 s of zeros). It blurs order: "A then B"
    becomes "A B A B". ``pad: zeros`` keeps the clip once, then silence, which the model masks
    (``ClapAudioEncoder`` ``lengths``).
    """
    n = wave.shape[-1]
    if n == 0:
        raise ValueError("cannot fit an empty waveform")
    if n >= length:
        start = crop_offset(n, length, mode, generator)
        return wave[start:start + length]
    if pad == "repeat":
        wave = wave.repeat(length // n)
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def load_clip(path: str | Path, target_sr: int, length: int, mode: CropMode = "start",
              generator: torch.Generator | None = None, pad: PadMode = "repeat",
              return_length: bool = False) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Load exactly the ``length``-sample window a crop needs: (length,) float32 at ``target_sr``
    (with ``return_length``: and how many of its samples are the clip's own, the rest being padding).

    Equivalent to ``fit_length(load_audio(path), ...)`` but reads and resamples only the window
    (plus a 64-sample margin for the resampling filter) of clips longer than ``length``: a 30 s
    Clotho clip then costs a third of the decode and resample work.
    """
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise AudioReadError(path, f"{type(exc).__name__}: {exc}") from exc
    sr, frames = int(info.samplerate), int(info.frames)
    if frames <= 0:
        raise AudioReadError(path, "zero-length audio (no samples)")
    n_target = resampled_length(frames, sr, target_sr)
    if n_target <= length + 2:  # short clip: pad the whole clip
        wave = load_audio(path, target_sr)
        real = min(wave.shape[-1], length) if pad == "zeros" else length  # repeat: the window is all signal
        wave = fit_length(wave, length, mode, generator, pad)
        return (wave, real) if return_length else wave
    start = crop_offset(n_target, length, mode, generator)  # chosen in the target domain
    margin = 64  # source samples either side: the sinc kernel (width ~16 taps at 44.1->48k) settles
    step = sr // math.gcd(sr, target_sr)  # 147 at 44.1->48 kHz: 147 source samples = 160 target samples
    src_start = max(0, int(start * sr / target_sr) - margin) // step * step  # aligned: no fractional shift
    src_stop = min(frames, int(math.ceil((start + length) * sr / target_sr)) + margin + 1)
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(src_start)
            data = f.read(src_stop - src_start, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioReadError(path, f"{type(exc).__name__}: {exc}") from exc
    wave = _to_mono_tensor(data, path)
    if sr != target_sr:
        wave = resampler(sr, target_sr)(wave)
    skip = start - src_start * target_sr // sr  # exact thanks to the alignment above
    wave = wave[skip:skip + length]
    if wave.shape[-1] < length:  # rounding at the very end of the file: pad a few samples
        wave = torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    return (wave, length) if return_length else wave
