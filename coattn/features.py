"""Containers passed between the encoders, the co-attention cascade and the scoring engine.

    SequenceFeatures  what an encoder returns: frames or tokens (B, T, D), mask, pooled (B, D)
    PreparedText      the cascade's per-caption input (and, for ``iterating``, its whole text stream)
    PreparedAudio     the cascade's per-clip input
    (the data loaders' batch is ``coattn.batch.Batch``)

Masks are boolean with ``True`` on real (non-padded) positions, the convention of Hugging Face
attention masks; attention code converts them to ``key_padding_mask`` (True = ignore) itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

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


@dataclass
class PreparedText:
    """Per-caption work of the pair score, done once per caption (not once per pair).

    states, mask: the cascade's text input at width d (N, L, d), (N, L). For ``iterating`` the text
    stream never sees the audio, so ``states`` is already its final XN, ``pooled`` its pooled vector
    (N, d), and ``embedding`` that vector projected into the joint space by the model (N, E): a
    pair then costs only the audio stream. For the other cascades ``pooled``/``embedding`` are None.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    count: Any = None  # coattn.counting.CountText: the per-caption half of the model's count head, if any

    def __len__(self) -> int:
        return self.states.shape[0]

    def index(self, idx) -> "PreparedText":
        """The captions ``idx`` (an index tensor or a slice)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return PreparedText(self.states[idx], self.mask[idx], pick(self.pooled), pick(self.embedding),
                            None if self.count is None else self.count.index(idx))


class PreparedAudio(NamedTuple):
    """Per-clip input of the pair score: the audio frames at the cascade's width d, (M, T, d), and
    their mask (M, T). A NamedTuple, so ``states, mask = prepared`` works where a pair was used."""

    states: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:  # clips, not the tuple's two fields
        return self.states.shape[0]

    def index(self, idx) -> "PreparedAudio":
        """The clips ``idx`` (an index tensor or a slice)."""
        return PreparedAudio(self.states[idx], self.mask[idx])
