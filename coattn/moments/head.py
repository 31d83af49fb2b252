"""The moment head: per-frame relevance + span boundaries on the cascade's text-conditioned audio stream.

For a (query, crop) pair the iterating cascade gives YN (T, d): every audio frame after N layers of
attention guided by the query (``CoAttentionCascade.pair_frames``). The head reads each frame:

    h_t = MLP(YN_t)            -> (z_t, l_t, r_t)
    relevance  p_t = sigmoid(z_t)                 is frame t inside a window of the query?
    boundaries left_t = softplus(l_t) * s, right_t = softplus(r_t) * s      seconds from frame t's centre
                                                  to its window's start / end (s = seconds per frame)

Loss (over the pairs of a batch; a frame is positive when its centre lies in one of the windows):

    L = BCE(z, y) + offset_weight * mean_{positive t} ( |left_t - left*_t| + |right_t - right*_t| ) / clip seconds

Decoding: each frame proposes [c_t - left_t, c_t + right_t] scored p_t; temporal NMS keeps the top 10.
Why frames and not a DETR-style set of windows: the cascade already gives one text-conditioned vector
per frame, so a per-frame head is one small MLP on it (no decoder, no Hungarian matching), trains from
a few hundred queries, and long recordings just stitch frame outputs; a set predictor needs many more
queries to learn its slots, and its fixed slot count does not follow a recording's length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MomentHead(nn.Module):
    """Frames (..., T, d) -> relevance logits (..., T) and boundary offsets in frames (..., T, 2)."""

    def __init__(self, width: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 3))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(frames).float()
        return out[..., 0], F.softplus(out[..., 1:])


def frame_targets(windows: torch.Tensor, num_frames: int, frame_seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of crops from their windows (B, K, 2) in crop seconds (rows with start < 0 are padding).

    Returns labels (B, T) in {0, 1} and offsets (B, T, 2): seconds from each frame centre to the start
    and end of the (shortest) window holding it (0 where no window does)."""
    centre = (torch.arange(num_frames, device=windows.device, dtype=torch.float32) + 0.5) * frame_seconds
    s, e = windows[..., 0][:, None, :], windows[..., 1][:, None, :]  # (B, 1, K)
    c = centre[None, :, None]  # (1, T, 1)
    inside = (windows[..., 0] >= 0)[:, None, :] & (c >= s) & (c < e)  # (B, T, K)
    length = torch.where(inside, e - s, torch.full_like(inside, float("inf"), dtype=torch.float32))
    k = length.argmin(-1, keepdim=True)  # the shortest window holding the frame
    labels = inside.any(-1)
    left = (c[..., 0] - s.expand_as(length).gather(-1, k)[..., 0]).clamp(min=0)
    right = (e.expand_as(length).gather(-1, k)[..., 0] - c[..., 0]).clamp(min=0)
    offsets = torch.stack([left, right], -1) * labels[..., None]
    return labels.float(), offsets


def moment_loss(logits: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor, target_offsets: torch.Tensor,
                frame_seconds: float, clip_seconds: float, offset_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Relevance BCE + boundary L1 on positive frames (offsets: ``offsets`` in frames, targets in seconds)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    pos = labels > 0
    if pos.any():
        l1 = (offsets[pos] * frame_seconds - target_offsets[pos]).abs().sum(-1).mean() / clip_seconds
    else:
        l1 = logits.sum() * 0.0
    return {"relevance": bce, "boundary": l1, "loss": bce + offset_weight * l1}


class FilmFrames(nn.Module):
    """The dual features' frame stream, for the ``stream: dual`` head (no co-attention): each tower frame,
    projected to ``width``, modulated by the query's pooled vector (FiLM, Perez et al. 2018):

        h_t = LN(W_a a_t) * (1 + gamma(q)) + beta(q),     [gamma, beta] = W_q q

    Frames never see each other nor the query's tokens: what the cascade adds over this is attention
    (across frames, guided by every token of the query)."""

    def __init__(self, audio_dim: int, text_dim: int, width: int, feature_norm: bool = False):
        super().__init__()
        self.audio_norm = nn.BatchNorm1d(audio_dim) if feature_norm else nn.Identity()
        self.text_norm = nn.BatchNorm1d(text_dim) if feature_norm else nn.Identity()
        self.audio, self.norm, self.film = nn.Linear(audio_dim, width), nn.LayerNorm(width), nn.Linear(text_dim, 2 * width)
        self.width = width

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """frames (B, T, Da), mask (B, T) True = real, query (B, Dt) -> (B, T, width)."""
        x = frames.clone()
        x[mask] = self.audio_norm(frames[mask])  # statistics of the real frames only
        gamma, beta = self.film(self.text_norm(query)).chunk(2, dim=-1)
        return self.norm(self.audio(x)) * (1 + gamma[:, None]) + beta[:, None]
