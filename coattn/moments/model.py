"""``MomentModel``: a CoAttnModel (iterating cascade) plus a ``MomentHead``; index a long recording once,
then localise any query in it. Also the zero-shot baseline: sliding spans scored by the dual branch.

    index = mm.index(waveform)                     # (S,) at the tower's rate: stitched tower frames
    mm.localize(index, "a dog, then a cow")        # (<= top_k, 3) [start s, end s, score], NMS'd
    mm.dual_sliding(index, "a dog")                # the dual encoder's best spans, same format

Localising reads only the index: the query's text stream once, then the cascade over the stitched
frames in chunks of the tower's length (hop: half of it), the head per frame, chunk outputs averaged
where they overlap, one proposal per frame, NMS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coattn.moments.head import MomentHead
from coattn.moments.windows import crop_starts, decode_frames, span_means, span_proposals, stitch, temporal_nms


@dataclass
class RecordingIndex:
    """Tower frames of one recording on one time line: (F, D), ``frame_seconds`` apart; ``duration`` s."""

    frames: torch.Tensor
    frame_seconds: float
    duration: float


class MomentModel(nn.Module):
    def __init__(self, model: nn.Module, hidden: int | None = None, nms_iou: float = 0.7, top_k: int = 10,
                 dual_spans: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)):
        super().__init__()
        if getattr(model.cascade, "kind", None) != "iterating":
            raise ValueError("the moment head reads the iterating cascade's text-conditioned audio stream: "
                             "set model.cascade.init_args.kind: iterating")
        self.model, self.head = model, MomentHead(model.cascade.width, hidden)
        self.nms_iou, self.top_k, self.dual_spans = nms_iou, top_k, tuple(dual_spans)

    # ---- the tower's time line ---------------------------------------------------------------
    @property
    def clip_samples(self) -> int:
        return int(self.model.audio_encoder.clip_samples)

    @property
    def sample_rate(self) -> int:
        return int(self.model.audio_encoder.sample_rate)

    @property
    def num_frames(self) -> int:
        return int(self.model.audio_encoder.num_frames)

    @property
    def frame_seconds(self) -> float:
        rate = getattr(self.model.audio_encoder, "frame_rate", None)  # frames per second, where the tower says
        return 1.0 / float(rate) if rate else self.clip_samples / self.sample_rate / self.num_frames

    # ---- training: the (query, crop) pairs of a batch ----------------------------------------
    def pair_outputs(self, audio_feats, text_feats, rows: torch.Tensor, inv: torch.Tensor):
        """Head outputs of the pairs (query rows[i], crop inv[i, c]): logits (b r, T), offsets (b r, T, 2)."""
        m = self.model
        text = m.prepare_text(text_feats)
        audio = m.prepare_audio(audio_feats)
        stage = m.cascade.clip_stage(audio, torch.unique(inv))
        _, remap = torch.unique(inv, return_inverse=True)
        frames = m.cascade.pair_frames(text, rows, stage, remap)
        return self.head(frames)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def index(self, waveform: torch.Tensor, batch: int = 8) -> RecordingIndex:
        """Slide the tower over a (S,) waveform (hop: half its input) and stitch its frames."""
        n, hop = self.clip_samples, self.clip_samples // 2
        total = waveform.shape[-1]
        starts = crop_starts(total, n, hop)
        crops = torch.stack([torch.nn.functional.pad(waveform[s:s + n], (0, max(0, n - (total - s))))
                             for s in starts])
        frames = torch.cat([self.model.encode_audio(crops[i:i + batch].to(self._device())).states
                            for i in range(0, len(crops), batch)])
        fs = self.frame_seconds
        n_frames = max(1, int(round(total / self.sample_rate / fs)))
        fstarts = [int(round(s / self.sample_rate / fs)) for s in starts]
        return RecordingIndex(stitch(frames, fstarts, max(n_frames, fstarts[-1] + 1)), fs, total / self.sample_rate)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def frame_scores(self, index: RecordingIndex, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Relevance probabilities (F,) and boundary offsets in seconds (F, 2) of a query over the index."""
        from coattn.features import SequenceFeatures

        m, t = self.model, self.num_frames
        text = m.prepare_text(m.encode_text([query]))
        total = index.frames.shape[0]
        starts = crop_starts(total, t, max(1, t // 2))
        chunks = torch.stack([index.frames[s:s + t] for s in starts])  # (n, <=T, D)
        mask = torch.ones(chunks.shape[:2], dtype=torch.bool, device=chunks.device)
        audio = m.prepare_audio(SequenceFeatures(chunks, mask, chunks.mean(1)))
        stage = m.cascade.clip_stage(audio, torch.arange(len(starts), device=chunks.device))
        rows = torch.zeros(1, dtype=torch.long, device=chunks.device)
        inv = torch.arange(len(starts), device=chunks.device)[None, :]
        logits, offsets = self.head(m.cascade.pair_frames(text, rows, stage, inv))  # (n, T'), (n, T', 2)
        both = stitch(torch.cat([logits[..., None], offsets], -1), starts, total)
        return torch.sigmoid(both[:, 0]), both[:, 1:] * index.frame_seconds

    @torch.no_grad()
    def localize(self, index: RecordingIndex, query: str, top_k: int | None = None) -> torch.Tensor:
        prob, off = self.frame_scores(index, query)
        props = decode_frames(prob.double(), off[:, 0].double(), off[:, 1].double(), index.frame_seconds,
                              index.duration)
        return temporal_nms(props, self.nms_iou, top_k or self.top_k)

    @torch.no_grad()
    def dual_sliding(self, index: RecordingIndex, query: str, top_k: int | None = None) -> torch.Tensor:
        """Zero-shot baseline: spans of ``dual_spans`` seconds every frame, each scored by the dual branch
        (masked-mean frames -> dual audio head, cosine with the query's dual embedding), NMS."""
        m, fs = self.model, index.frame_seconds
        lengths = sorted({max(1, int(round(s / fs))) for s in self.dual_spans})
        spans = span_proposals(index.frames.shape[0], lengths).to(index.frames.device)
        emb = m.dual_audio(span_means(index.frames, spans))  # dual_pooling "mean": the pooled frames
        q = m.dual_embed_text(m.encode_text([query]))[0]
        score = emb @ q
        props = torch.stack([spans[:, 0] * fs, (spans[:, 1] * fs).clamp(max=index.duration), score], 1).double()
        return temporal_nms(props, self.nms_iou, top_k or self.top_k)
