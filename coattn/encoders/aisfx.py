"""The pretrained sound-effects tower of the ``aisfx`` package (Ma & Lerch, ISMIR 2022), as frames.

aisfx's network (``aisfx.models.cnn2d.EmbeddingNet('max', 3, 1, 64)``, the "X-Sequential-CE"
model trained on sound-effects libraries) is 4 conv blocks (64-128-256-512 channels, 2x2 max-pool
after the first three) on a (time, 96 mel) spectrogram, a mean over frequency and a max over time:
one 512-d vector per block of spectrogram. coattn's co-attention needs frames, so this tower runs
the conv blocks on the WHOLE window and keeps the frames before the time max-pool: states
(B, T', 512), one frame per 8 spectrogram hops = 8192 samples = 0.186 s (5.38 frames/s);
pooled = the max over the real frames, which is the package's own embedding.

Front end (torch; what the package's ``spectrogram/spectrogram_librosa.py`` computes with
librosa 0.9.2, whose arguments and defaults it relies on): mono 44.1 kHz, divided by its peak
(``y / max|y|``, over the clip's own samples), STFT with n_fft = win = 2048, hop 1024, periodic
Hann window, ``center=True`` with ZERO padding of n_fft // 2 each side (librosa 0.9.2's default
``pad_mode="constant"``, like 0.11's; 'reflect' was the default before 0.9), power 2, 96 HTK mel
filters from 0 to 22050 Hz each normalised to unit sum (``norm=1.0``), ``log10(1 + 10000 * mel)``,
then the package's 'original' min-max normalisation ``(x - 0) / 9.457798957824707``. The
network takes (time, mel), the layout of the package's Essentia front end (its librosa front end
returns (mel, time); we transpose).

    model:
      audio_encoder:
        class_path: coattn.encoders.AisfxAudioEncoder
        init_args: {clip_seconds: 10.0}       # data: sample_rate: 44100, clip_seconds: 10.0

Weights: the installed package's ``models/checkpoint.pth`` (a ``(state_dict, dataset_dict)``
tuple whose dataset dict holds numpy int64 scalars), read with ``torch.load(weights_only=True)``
allowlisting only numpy's scalar constructor, ``np.dtype`` and ``Int64DType``; only the
``embedding_net.*`` tensors are used (the classifier heads are dropped).
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coattn.encoders.base import AudioTower
from coattn.encoders.clap_checkpoint import load_branch, select_prefix
from coattn.errors import CheckpointError
from coattn.io import file_identity, weights_digest

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
N_FFT = 2048  # = win_length
HOP = 1024
N_MELS = 96
F_MIN, F_MAX = 0.0, 22050.0
NORM_MIN, NORM_MAX = 0.0, 9.457798957824707  # aisfx.preprocessing.spectrogram_normalize('original')
TIME_POOL = 8  # three 2x2 max-pools: one output frame per 8 spectrogram hops
HOW_TO_GET = "install the package: pip install --no-deps aisfx==0.1.2 (.ci/install.sh does)"


def package_checkpoint() -> Path:
    """The installed aisfx package's ``models/checkpoint.pth``, located without importing aisfx."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the aisfx package is not installed, so its weights are not here: {HOW_TO_GET}, "
                              "or set `checkpoint:` to a copy of its models/checkpoint.pth")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "checkpoint.pth"


def package_version() -> str:
    try:
        return importlib.metadata.version("aisfx")
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def load_aisfx_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``embedding_net.*`` tensors (prefix stripped) of an aisfx checkpoint, read with weights_only=True.

    The file pickles ``(state_dict, {dataset: (index, classes)})`` with numpy int64 scalars in the
    dict: allowlisted are exactly the three globals those need, nothing else.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"aisfx checkpoint not found: {str(path)!r}; {HOW_TO_GET}")
    allow = [np.core.multiarray.scalar, np.dtype, np.dtypes.Int64DType]
    try:
        with torch.serialization.safe_globals(allow):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and unreadable files alike
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"cannot read aisfx checkpoint {str(path)!r} with weights_only=True: "
                              f"{type(exc).__name__}: {first}") from None
    state = obj[0] if isinstance(obj, (tuple, list)) and obj else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} holds no aisfx state dict (top level: {type(obj).__name__})")
    net = select_prefix(state, "embedding_net.")
    if not net:
        raise CheckpointError(f"{str(path)!r} has no embedding_net.* weights (keys like {sorted(state)[:3]})")
    return net


@functools.lru_cache(maxsize=None)
def mel_filters() -> np.ndarray:
    """(96, 1025) float32: librosa 0.9.2's ``filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0,
    fmax=22050, htk=True, norm=1.0)`` (triangles on the HTK mel scale, each row summing to 1)."""
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    mel_f = 700.0 * (10.0 ** (np.linspace(to_mel(F_MIN), to_mel(F_MAX), N_MELS + 2) / 2595.0) - 1.0)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((N_MELS, len(fft_freqs)), dtype=np.float32)  # librosa fills a float32 array
    for i in range(N_MELS):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    length = np.abs(weights).astype(np.float64).sum(axis=1, keepdims=True)
    length[length < np.finfo(np.float32).tiny] = 1.0  # librosa.util.normalize leaves empty rows alone
    return (weights / length).astype(np.float32)


class ConvBlock(nn.Module):
    """aisfx's ``ConvBlock`` (same parameter names, so its state dict loads): 2 x (3x3 conv, BN, ReLU), pool."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))  # in place, as aisfx (BN's backward needs its input only)
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, kernel_size=pool) if pool > 1 else x


class AisfxNet(nn.Module):
    """``EmbeddingNet('max', 3, 1, 64)`` up to the mean over frequency: (B, T, 96) -> (B, 512, T // 8)."""

    def __init__(self, width: int = 64):
        super().__init__()
        chans = [1, width, width * 2, width * 4, width * 8]
        for i in range(4):
            setattr(self, f"conv_block{i + 1}", ConvBlock(chans[i], chans[i + 1]))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec.unsqueeze(1)  # (B, 1, T, F)
        for i, pool in enumerate((2, 2, 2, 1)):
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
        return x.mean(dim=3)  # (B, 512, T'), before the package's max over time


class AisfxAudioEncoder(AudioTower):
    """aisfx's pretrained sound-effects CNN -> ``SequenceFeatures`` of ~5.4 frames/s, 512-d (module docstring).

    Args:
        clip_seconds: window length (44.1 kHz samples = round(44100 * clip_seconds)); the data
            module's ``clip_seconds`` must be the same. 10 s -> 53 frames.
        checkpoint: an aisfx ``checkpoint.pth``; None = the installed package's own file.
        freeze: no gradients, always eval mode (BatchNorm statistics of the checkpoint), forward
            under ``torch.no_grad``: what the feature cache needs.
        pretrained: load the weights. False: random init, for weights that come from elsewhere
            (an exported coattn model's safetensors).

    Input: (B, clip_samples) mono 44.1 kHz. Output: states (B, T', 512), mask from ``lengths``,
    pooled (B, 512) = max over the real frames (= ``aisfx`` ``get_embedding`` of the window).
    """

    frame_pooling = "max"  # how ``pooled`` comes from ``states`` (moment spans pool their frames the same way)

    def __init__(self, clip_seconds: float = 10.0, checkpoint: str | None = None, freeze: bool = True,
                 pretrained: bool = True):
        clip_samples = int(round(SAMPLE_RATE * clip_seconds))
        frames = (1 + clip_samples // HOP) // 2 // 2 // 2  # centred STFT frames, three 2x pools
        if frames < 1:
            raise ValueError(f"clip_seconds={clip_seconds} is too short for the aisfx tower (>= 0.19 s: 8 hops)")
        super().__init__(sample_rate=SAMPLE_RATE, clip_samples=clip_samples, num_frames=frames, out_dim=512,
                         freeze=freeze)
        self.checkpoint, self.pretrained = checkpoint, pretrained
        self.net = AisfxNet()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filters()).T.contiguous(), persistent=False)  # (1025, 96)
        self._checkpoint_id = None
        if pretrained:
            path = Path(checkpoint).expanduser() if checkpoint is not None else package_checkpoint()
            state = load_aisfx_state_dict(path)
            missing = sorted(set(self.net.state_dict()) - set(state))
            if missing:
                raise CheckpointError(f"{str(path)!r} lacks {len(missing)} aisfx weights, e.g. {missing[:3]}")
            load_branch(self.net, state, source=str(path), target="AisfxAudioEncoder")
            self._checkpoint_id = f"aisfx={package_version()}:{file_identity(path)}"
        self.finish_init()

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / (TIME_POOL * HOP)  # 5.38 frames/s: one per 8192 samples

    def identity(self) -> str:
        weights = self._checkpoint_id or f"random-init:{weights_digest(self.net)}"
        return f"AisfxAudioEncoder:{weights}:clip_samples={self.clip_samples}"

    def export_args(self) -> dict:
        return {"checkpoint": None, "pretrained": False}

    def frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        # output frame f starts at spectrogram frame 8f, centred on sample 8f * 1024: real if inside the clip
        return torch.ceil(lengths.float() / (TIME_POOL * HOP))

    def spectrogram(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input (B, T, 96): peak-normalised, log-compressed, min-max-normalised mel."""
        wave = waveform.float()
        mag = wave.abs()
        if lengths is not None:  # the peak of the clip's own samples, not of its padding
            real = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths.to(wave.device)[:, None]
            mag = mag * real
        peak = mag.amax(dim=1, keepdim=True)
        wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))
        spec = torch.stft(wave, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="constant",
                          return_complex=True)  # (B, 1025, T)
        power = spec.real.square() + spec.imag.square()
        mel = power.transpose(1, 2) @ self.mel  # (B, T, 96)
        return (torch.log10(1.0 + 10000.0 * mel) - NORM_MIN) / (NORM_MAX - NORM_MIN)

    def encode(self, waveform: torch.Tensor, lengths: torch.Tensor | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.net(self.spectrogram(waveform, lengths)).transpose(1, 2)  # (B, T', 512)
        pooled = states.masked_fill(~mask[:, :, None], -math.inf).amax(dim=1)  # max over the real frames
        return states, pooled
