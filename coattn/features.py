"""Containers passed between the encoders, the co-attention cascade and the scoring engine.

Masks are boolean with ``True`` on real (non-padded) positions, the convention of Hugging Face
attention masks; attention code converts them to ``key_padding_mask`` (True = ignore) itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceFeatures:
    """Frame- or token-level features of a batch plus the encoder's own pooled vector.

    states: (B, T, D) float; mask: (B, T) bool, True = real; pooled: (B, D) float, the
    encoder-native summary (HTS-AT's ``embedding`` or the text model's ``pooler_output``).
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SequenceFeatures":
        """Move to ``device``; ``dtype`` (if given) applies to the float tensors only."""
        return SequenceFeatures(self.states.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype))

    def index(self, idx) -> "SequenceFeatures":
        return SequenceFeatures(self.states[idx], self.mask[idx], self.pooled[idx])

    @staticmethod
    def cat(parts: list["SequenceFeatures"]) -> "SequenceFeatures":
        """Concatenate along the batch, right-padding sequences to the longest one."""
        length = max(p.states.shape[1] for p in parts)
        states, masks = [], []
        for p in parts:
            pad = length - p.states.shape[1]
            states.append(torch.nn.functional.pad(p.states, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(p.mask, (0, pad), value=False))
        return SequenceFeatures(torch.cat(states), torch.cat(masks), torch.cat([p.pooled for p in parts]))
