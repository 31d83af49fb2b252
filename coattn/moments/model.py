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

from coattn.errors import ConfigError
from coattn.features import SequenceFeatures
from coattn.moments.head import FilmFrames, MomentHead
from coattn.moments.windows import (crop_starts, decode_frames, decode_spans, span_means, span_proposals, stitch,
                                    temporal_nms)


@dataclass
class RecordingIndex:
    """Tower frames of one recording on one time line: (F, D), ``frame_seconds`` apart; ``duration`` s."""

    frames: torch.Tensor
    frame_seconds: float
    duration: float


class MomentModel(nn.Module):
    """``stream``: what the head reads. ``cascade``: the iterating cascade's text-conditioned frames;
    ``dual``: the tower's frames FiLM-modulated by the query's pooled vector (``FilmFrames``, no co-attention,
    width ``stream_width``). ``index_hop``: seconds between the sliding tower's crops (None: half its input).

    ``decode``: ``spans`` (every span up to ``max_window`` seconds, None: any, scored by the sum of its frames'
    relevance logits: ``decode_spans``) or ``frames`` (each frame proposes its regressed boundaries).
    ``prior``: ``dual`` adds the dual branch's frame similarity to the relevance logits,
    ``z_t = head_t + a * cos(dual_audio(pool of the frames within prior_window/2 of t), dual_text(query))`` with a
    learnt (init ``prior_scale``): the head learns what the dual misses (residual), as the time-binding branch
    does for clip scores; ``none``: the head alone.
    ``context``: seconds of index frames the cascade attends over at once (None: the tower's window). A query
    such as "a kettle, then a hat" spans both events and the gap between them, often longer than the tower's
    10 s: only a context that holds the whole span lets attention relate the two (training crops are then cut
    from the cached index at this length; evaluation slides over the index in chunks of it, hop half)."""

    def __init__(self, model: nn.Module, hidden: int | None = None, nms_iou: float = 0.7, top_k: int = 10,
                 dual_spans: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0), stream: str = "cascade",
                 stream_width: int = 256, index_hop: float | None = None, decode: str = "spans",
                 max_window: float | None = None, prior: str = "none", prior_window: float = 1.0,
                 prior_scale: float = 10.0, context: float | None = None):
        super().__init__()
        if stream not in ("cascade", "dual"):
            raise ConfigError(f"model.stream must be 'cascade' or 'dual', not {stream!r}")
        if decode not in ("spans", "frames"):
            raise ConfigError(f"model.decode must be 'spans' or 'frames', not {decode!r}")
        if prior not in ("none", "dual"):
            raise ConfigError(f"model.prior must be 'none' or 'dual', not {prior!r}")
        if stream == "cascade" and getattr(model.cascade, "kind", None) != "iterating":
            raise ConfigError("the moment head reads the iterating cascade's text-conditioned audio stream: "
                              "set model.cascade.init_args.kind: iterating (or model.stream: dual)")
        self.model, self.stream = model, stream
        if stream == "dual":
            self.film = FilmFrames(model.audio_encoder.out_dim, model.text_encoder.out_dim, stream_width,
                                   isinstance(model.dual_audio.norm, nn.BatchNorm1d))
        self.head = MomentHead(model.cascade.width if stream == "cascade" else stream_width, hidden)
        self.nms_iou, self.top_k, self.dual_spans = nms_iou, top_k, tuple(dual_spans)
        self.index_hop = index_hop
        self.decode, self.max_window, self.prior, self.prior_window = decode, max_window, prior, prior_window
        if context is not None and not context > 0:
            raise ConfigError(f"model.context must be > 0 seconds (or null: the tower's window), not {context!r}")
        self.context = context
        if prior == "dual":
            self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))

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
    def hop_samples(self) -> int:
        hop = self.clip_samples // 2 if self.index_hop is None else int(round(self.index_hop * self.sample_rate))
        return max(1, min(hop, self.clip_samples))

    @property
    def frame_pooling(self) -> str:
        """How the tower pools its frames into its clip vector ("max" for aisfx, else "mean")."""
        return getattr(self.model.audio_encoder, "frame_pooling", "mean")

    def pool_frames(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The tower's own pooled vector of (B, T, D) frames: max or mean over the real ones."""
        if self.frame_pooling == "max":
            return states.masked_fill(~mask[..., None], float("-inf")).amax(1)
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    @property
    def context_frames(self) -> int:
        """Frames the cascade sees at once: ``context`` seconds, or the tower's own frames."""
        return self.num_frames if self.context is None else max(1, int(round(self.context / self.frame_seconds)))

    @property
    def frame_seconds(self) -> float:
        rate = getattr(self.model.audio_encoder, "frame_rate", None)  # frames per second, where the tower says
        return 1.0 / float(rate) if rate else self.clip_samples / self.sample_rate / self.num_frames

    # ---- training: the (query, crop) pairs of a batch ----------------------------------------
    def pair_outputs(self, audio_feats, text_feats, rows: torch.Tensor, inv: torch.Tensor):
        """Head outputs of the pairs (query rows[i], crop inv[i, c]): logits (b r, T), offsets (b r, T, 2)."""
        m = self.model
        if self.stream == "dual":
            a = audio_feats.index(inv[:, 0])
            logits, offsets = self.head(self.film(a.states, a.mask, text_feats.pooled[rows]))
        else:
            text = m.prepare_text(text_feats)
            audio = m.prepare_audio(audio_feats)
            stage = m.cascade.clip_stage(audio, torch.unique(inv))
            _, remap = torch.unique(inv, return_inverse=True)
            logits, offsets = self.head(m.cascade.pair_frames(text, rows, stage, remap))
        if self.prior == "dual":
            cols = inv[:, :1] if self.stream == "dual" else inv  # the pairs the head scored
            a = audio_feats.index(cols.reshape(-1))
            q = m.dual_embed_text(text_feats)[rows.repeat_interleave(cols.shape[1])]
            logits = logits + self.prior_logits(a.states, a.mask, q).reshape(logits.shape)
        return logits, offsets

    def prior_logits(self, frames: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``a * cos(dual_audio(pooled frames around t), query)``: frames (B, T, D), mask (B, T), query (B, E)
        dual text embeddings -> (B, T). Each frame's neighbourhood (``prior_window`` s) is pooled as the tower
        pools a clip (max for aisfx, else mean), so the dual audio head sees the kind of vector it was trained on."""
        k = max(1, int(round(self.prior_window / self.frame_seconds))) | 1  # odd: centred on the frame
        x = frames.float().masked_fill(~mask[..., None], float("-inf") if self.frame_pooling == "max" else 0.0)
        x = x.transpose(1, 2)  # (B, D, T)
        if self.frame_pooling == "max":
            pooled = torch.nn.functional.max_pool1d(x, k, 1, k // 2)
        else:
            pooled = torch.nn.functional.avg_pool1d(x, k, 1, k // 2, count_include_pad=False)
        pooled = pooled.transpose(1, 2).masked_fill(~mask[..., None], 0.0)  # padding: any finite vector
        b, t, d = pooled.shape
        emb = self.model.dual_audio(pooled.reshape(b * t, d)).reshape(b, t, -1)
        return self.prior_scale * torch.einsum("bte,be->bt", emb, query.to(emb.dtype))

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def index(self, waveform: torch.Tensor, batch: int = 8) -> RecordingIndex:
        """Slide the tower over a (S,) waveform (hop: ``hop_samples``) and stitch its frames."""
        n, hop = self.clip_samples, self.hop_samples
        total = waveform.shape[-1]
        starts = crop_starts(total, n, hop)
        crops = torch.stack([torch.nn.functional.pad(waveform[s:s + n], (0, max(0, n - (total - s))))
                             for s in starts])
        frames = torch.cat([self.model.encode_audio(crops[i:i + batch].to(self._device())).states
                            for i in range(0, len(crops), batch)])
        fs = self.frame_seconds
        fstarts = [int(round(s / self.sample_rate / fs)) for s in starts]
        # the tower's frames may cover a little less than its window: the index ends at the last covered frame
        n_frames = max(1, min(int(round(total / self.sample_rate / fs)), fstarts[-1] + frames.shape[1]))
        return RecordingIndex(stitch(frames, fstarts, max(n_frames, fstarts[-1] + 1)), fs, total / self.sample_rate)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def frame_logits(self, index: RecordingIndex, query: str | SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Relevance logits (F,) (the prior included) and boundary offsets in seconds (F, 2) over the index."""
        m = self.model
        feats = m.encode_text([query]) if isinstance(query, str) else query
        logits, offsets = self._head_logits(index, feats)
        if self.prior == "dual":
            mask = torch.ones(1, index.frames.shape[0], dtype=torch.bool, device=index.frames.device)
            logits = logits + self.prior_logits(index.frames[None], mask, m.dual_embed_text(feats)[:1])[0]
        return logits, offsets

    def _head_logits(self, index: RecordingIndex, feats: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        m, t = self.model, self.context_frames
        if self.stream == "dual":  # frames are independent: the whole index at once
            mask = torch.ones(1, index.frames.shape[0], dtype=torch.bool, device=index.frames.device)
            logits, offsets = self.head(self.film(index.frames[None], mask, feats.pooled[:1]))
            return logits[0], offsets[0] * index.frame_seconds
        text = m.prepare_text(feats)
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
        return both[:, 0], both[:, 1:] * index.frame_seconds

    @torch.no_grad()
    def localize(self, index: RecordingIndex, query: str | SequenceFeatures, top_k: int | None = None) -> torch.Tensor:
        """The query's best windows in the index: (<= top_k, 3) [start s, end s, score], by ``decode``."""
        logits, offsets = self.frame_logits(index, query)
        return self.decode_windows(logits, offsets, index, top_k)

    def decode_windows(self, logits: torch.Tensor, offsets: torch.Tensor, index: RecordingIndex,
                       top_k: int | None = None, decode: str | None = None) -> torch.Tensor:
        """Windows from frame outputs (``frame_logits``) by ``decode`` (default: the model's), NMS'd."""
        k, fs = top_k or self.top_k, index.frame_seconds
        if (decode or self.decode) == "spans":
            max_frames = None if self.max_window is None else max(1, int(round(self.max_window / fs)))
            return decode_spans(logits.double(), fs, index.duration, max_frames, self.nms_iou, k)
        props = decode_frames(torch.sigmoid(logits).double(), offsets[:, 0].double(), offsets[:, 1].double(), fs,
                              index.duration)
        return temporal_nms(props, self.nms_iou, k)

    @torch.no_grad()
    def dual_sliding(self, index: RecordingIndex, query: str | SequenceFeatures,
                     top_k: int | None = None) -> torch.Tensor:
        """Zero-shot baseline: spans of ``dual_spans`` seconds every frame, each scored by the dual branch
        (the span's frames pooled as the dual branch pools a clip -> dual audio head, cosine with the
        query's dual embedding), NMS."""
        m, fs = self.model, index.frame_seconds
        lengths = sorted({max(1, int(round(s / fs))) for s in self.dual_spans})
        spans = span_proposals(index.frames.shape[0], lengths).to(index.frames.device)
        if m.dual_pooling == "encoder" and self.frame_pooling == "max":  # the tower's own clip vector
            pooled = torch.cat([index.frames.unfold(0, n, 1).amax(-1) for n in lengths if n <= len(index.frames)]
                               or [index.frames.amax(0, keepdim=True)])
        else:
            pooled = span_means(index.frames, spans)
        emb = m.dual_audio(pooled)
        q = m.dual_embed_text(m.encode_text([query]) if isinstance(query, str) else query)[0]
        score = emb @ q
        props = torch.stack([spans[:, 0] * fs, (spans[:, 1] * fs).clamp(max=index.duration), score], 1).double()
        return temporal_nms(props, self.nms_iou, top_k or self.top_k)
