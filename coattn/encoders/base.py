"""What every audio tower is: waveform windows in, frame features + a pooled vector out.

The rest of coattn reads only these attributes, so any tower works with the feature cache
(``identity()``, ``sample_rate``, ``clip_samples``), ``coattn search`` / ``coattn export`` /
model cards (``sample_rate``, ``clip_samples``, ``out_dim``), the model's projections (``out_dim``)
and the start-up check that the data module feeds the tower its own window (``sample_rate``,
``clip_samples``). A new tower (PaSST, BEATs, PANNs, EfficientAT...) is one subclass:

    class MyTower(AudioTower):
        def __init__(self, checkpoint: str, freeze: bool = True):
            super().__init__(sample_rate=32000, clip_samples=320000, num_frames=..., out_dim=..., freeze=freeze)
            self.net = ...                      # load the weights here
            self.finish_init()                  # applies freeze (no grads, eval mode)

        def identity(self) -> str:              # the feature-cache key: weights file + settings
            return f"MyTower:{file_identity(self.checkpoint)}"

        def encode(self, waveform, lengths):    # (B, clip_samples) -> states (B, num_frames, out_dim), pooled
            ...

``forward`` checks the input shape, runs ``encode`` under ``no_grad`` when frozen and builds the
frame mask from ``lengths`` (``frame_mask``).
"""
from __future__ import annotations

import torch
from torch import nn

from coattn.features import SequenceFeatures


class AudioTower(nn.Module):
    """Base class of the audio encoders (module docstring).

    Attributes every tower sets (through ``__init__``):
        sample_rate: Hz of the waveforms it takes.
        clip_samples: window length in samples; ``forward`` takes exactly (B, clip_samples).
        num_frames: frames of ``states`` per window.
        out_dim: width of ``states`` and ``pooled``.
        freeze: no gradients, always eval mode, forward under ``torch.no_grad`` (what makes the
            feature cache valid).
    """

    def __init__(self, *, sample_rate: int, clip_samples: int, num_frames: int, out_dim: int, freeze: bool):
        super().__init__()
        self.sample_rate, self.clip_samples = int(sample_rate), int(clip_samples)
        self.num_frames, self.out_dim, self.freeze = int(num_frames), int(out_dim), bool(freeze)

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    @property
    def frame_rate(self) -> float:
        """Frames per second of ``states``."""
        return self.num_frames * self.sample_rate / self.clip_samples

    def finish_init(self) -> None:
        """Apply ``freeze`` and the training mode; call at the end of a subclass's ``__init__``.

        Lightning (>= 2.2) does not call ``.train()`` when fitting starts (it keeps each module's
        mode), so the modes must hold from construction.
        """
        if self.freeze:
            self.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "AudioTower":
        # a frozen tower stays in eval so its features are deterministic (and cacheable)
        return super().train(mode and not self.freeze)

    def identity(self) -> str:
        """Cache key of the features: class, settings and weights (file identity or a digest)."""
        raise NotImplementedError

    def export_args(self) -> dict:
        """``init_args`` that an exported model (``coattn export``) overrides: the weights are in its
        safetensors, so the tower is rebuilt without reading its checkpoint file."""
        return {}

    def frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames holding real audio of clips with ``lengths`` samples: frame f covers samples
        [f, f + 1) * clip_samples / num_frames and is real if it starts inside the clip."""
        return torch.ceil(lengths.float() * self.num_frames / self.clip_samples)

    def frame_mask(self, lengths: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """(B, num_frames) bool, True on frames with real audio; all True when ``lengths`` is None."""
        if lengths is None:
            return torch.ones(batch, self.num_frames, dtype=torch.bool, device=device)
        frames = self.frames_of(lengths.to(device)).clamp(1, self.num_frames)
        return torch.arange(self.num_frames, device=device)[None, :] < frames[:, None]

    def check_input(self, waveform: torch.Tensor) -> None:
        if waveform.dim() != 2 or waveform.shape[1] != self.clip_samples:
            raise ValueError(f"expected waveforms of shape (B, {self.clip_samples}) at {self.sample_rate} Hz, "
                             f"got {tuple(waveform.shape)}; pad/crop clips to {self.clip_samples} samples "
                             f"(data.init_args.sample_rate: {self.sample_rate}, clip_seconds: {self.clip_seconds:g})")

    def encode(self, waveform: torch.Tensor, lengths: torch.Tensor | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, num_frames, out_dim), pooled (B, out_dim)) of checked waveforms; ``mask`` is
        ``frame_mask(lengths)`` (a tower whose pooled vector ignores padding uses it)."""
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> SequenceFeatures:
        """``lengths``: (B,) samples of each clip's own audio (the rest of the window is padding):
        frames that hold none of it are masked. None: every clip fills the window."""
        self.check_input(waveform)
        mask = self.frame_mask(lengths, waveform.shape[0], waveform.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states, pooled = self.encode(waveform, lengths, mask)
        assert states.shape[1] == self.num_frames, f"{type(self).__name__}: {states.shape[1]} frames, " \
                                                   f"expected {self.num_frames}"
        return SequenceFeatures(states=states, mask=mask, pooled=pooled)

