"""``Batch``: what every data loader yields and the only thing the LightningModule reads from one.

    audio           FloatTensor (B, S)  S = sample_rate * clip_seconds (480,000 by default); (B, 0)
                                        when a feature cache supplies ``audio_features`` instead
    clip_index      LongTensor  (B,)    index of the clip in its split (stable: the split's clip order)
    fnames          list[str]   (B)     file name as in the caption file
    captions        list[str]   (C)     train: one per item (C == B, item b = (caption b, clip b));
                                        eval: all captions of the B clips, flattened in clip order
    caption_clip    LongTensor  (C,)    clip_index of each caption
    valid           BoolTensor  (B,)    False where the clip could not be read (its audio is silence)
    audio_lengths   LongTensor  (B,) | None   samples of each clip's own audio in ``audio`` (the rest
                                        is padding that ``pad: zeros`` left silent and the model
                                        masks); None when every clip fills its window
    audio_features  SequenceFeatures | None   a frozen audio encoder's cached output (feature cache)
    text_features   SequenceFeatures | None   a frozen text encoder's cached output (feature cache)
    events          SceneEvents | None        training only, when the loss asked for event timings
                                        (``set_scene_events``) and the root has scene metadata: each
                                        clip's event occurrences and each caption's event phrases
                                        (coattn/time_binding.py)

``data_modules``' collate builds it; Lightning moves it to the device field by field (dataclasses
are collections to ``apply_to_collection``). It also reads as a mapping of its set fields
(``batch["audio"]``, ``"audio_features" in batch``, ``set(batch)``), for code written against the
earlier dict batch; ``len(batch)`` is the number of clips B.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from coattn.features import SequenceFeatures
from coattn.time_binding import SceneEvents


@dataclass
class Batch:
    audio: torch.Tensor
    clip_index: torch.Tensor
    fnames: list[str]
    captions: list[str]
    caption_clip: torch.Tensor
    valid: torch.Tensor
    audio_lengths: torch.Tensor | None = None
    audio_features: SequenceFeatures | None = None
    text_features: SequenceFeatures | None = None
    events: SceneEvents | None = None

    def __len__(self) -> int:
        return self.clip_index.shape[0]

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:  # "audio_features" in batch: the field is set
        return getattr(self, key, None) is not None

    def __iter__(self):  # the names of the set fields, as the keys of the earlier dict batch
        return (f for f in self.__dataclass_fields__ if getattr(self, f) is not None)

    def keys(self) -> list[str]:
        return list(self)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)

    def pin_memory(self) -> "Batch":
        """Page-locked copy (DataLoader ``pin_memory=True`` calls this on custom batch types)."""
        pin = lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return self.replace(audio=pin(self.audio), clip_index=pin(self.clip_index),
                            caption_clip=pin(self.caption_clip), valid=pin(self.valid))

    def valid_items(self) -> "Batch":
        """A training batch without the items whose audio could not be read (item b = caption b, clip b)."""
        if bool(self.valid.all()):
            return self
        keep = self.valid.nonzero().squeeze(1)
        idx = keep.tolist()
        return Batch(audio=self.audio[keep], clip_index=self.clip_index[keep], fnames=[self.fnames[i] for i in idx],
                     captions=[self.captions[i] for i in idx], caption_clip=self.caption_clip[keep],
                     valid=self.valid[keep],
                     audio_lengths=None if self.audio_lengths is None else self.audio_lengths[keep],
                     audio_features=None if self.audio_features is None else self.audio_features.index(keep),
                     text_features=None if self.text_features is None else self.text_features.index(keep),
                     events=None if self.events is None else self.events.index(keep))
