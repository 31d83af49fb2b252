"""Windows over long recordings: the sliding tower, stitched frames, proposals, temporal NMS.

A recording longer than the audio tower's input (``clip_samples``, 10 s for CLAP) is cut into
overlapping crops (hop = half a crop, the last crop flush with the end), each encoded, and their
frames stitched onto one time line at the tower's frame rate (``num_frames / clip seconds``:
3.2 frames/s for HTS-AT): a global frame is the mean of the crops' frames that cover it.
"""
from __future__ import annotations

import math

import torch

from coattn.moments.metrics import iou_cross


def crop_starts(total: int, length: int, hop: int) -> list[int]:
    """Start indices of crops of ``length`` over ``total`` items, every ``hop``, the last flush with the end."""
    if total <= length:
        return [0]
    n = math.ceil((total - length) / hop)
    return sorted({min(i * hop, total - length) for i in range(n + 1)})


def stitch(chunks: torch.Tensor, starts: list[int], total: int) -> torch.Tensor:
    """Mean of overlapping chunks (n, T, ...) placed at ``starts`` on a line of ``total`` steps: (total, ...)."""
    n, t = chunks.shape[:2]
    idx = (torch.as_tensor(starts, device=chunks.device)[:, None] + torch.arange(t, device=chunks.device)).clamp(
        max=total - 1).reshape(-1)
    out = torch.zeros((total, *chunks.shape[2:]), dtype=chunks.dtype, device=chunks.device)
    count = torch.zeros(total, dtype=chunks.dtype, device=chunks.device)
    out.index_add_(0, idx, chunks.reshape(n * t, *chunks.shape[2:]))
    count.index_add_(0, idx, torch.ones(n * t, dtype=chunks.dtype, device=chunks.device))
    return out / count.clamp(min=1).view(-1, *([1] * (out.dim() - 1)))


def temporal_nms(windows: torch.Tensor, iou_threshold: float = 0.7, max_keep: int = 10) -> torch.Tensor:
    """Greedy NMS of (N, 3) [start, end, score] rows: the best first, then drop the rows that overlap a kept
    one with IoU > threshold. Returns the kept rows by descending score (at most ``max_keep``).
    One IoU row per kept window (O(max_keep N)), never the N x N matrix: span decoding proposes every span."""
    if windows.numel() == 0:
        return windows.reshape(0, 3)
    windows = windows[torch.sort(windows[:, 2], descending=True, stable=True).indices]
    alive = torch.ones(len(windows), dtype=torch.bool, device=windows.device)
    keep = []
    while len(keep) < max_keep and bool(alive.any()):
        i = int(alive.to(torch.uint8).argmax())  # the best window still alive
        keep.append(i)
        alive &= ~(iou_cross(windows[i:i + 1, :2], windows[:, :2])[0] > iou_threshold)
        alive[i] = False
    return windows[keep]


def decode_frames(prob: torch.Tensor, left: torch.Tensor, right: torch.Tensor, frame_seconds: float,
                  duration: float) -> torch.Tensor:
    """Each frame t proposes [c_t - left_t, c_t + right_t] seconds (c_t its centre) with score prob_t: (T, 3)."""
    centre = (torch.arange(len(prob), dtype=prob.dtype, device=prob.device) + 0.5) * frame_seconds
    start = (centre - left).clamp(0, duration)
    end = (centre + right).clamp(0, duration)
    end = torch.maximum(end, (start + frame_seconds).clamp(max=duration))
    return torch.stack([start, end, prob], dim=1)


def decode_spans(logits: torch.Tensor, frame_seconds: float, duration: float, max_frames: int | None = None,
                 iou_threshold: float = 0.7, max_keep: int = 10) -> torch.Tensor:
    """Every span of 1..``max_frames`` frames (None: any length), scored by the sum of the relevance logits z_t
    inside it, NMS'd: (<= max_keep, 3) [start s, end s, score].

    Why the sum: if frames are independently inside (p_t = sigmoid(z_t)), the log-likelihood of "the window
    is exactly [a, b)" against "there is no window" is sum_{a <= t < b} log p_t/(1 - p_t) = sum z_t; the best
    span is the maximum-sum run of frames, its edges where the relevance crosses 1/2. No threshold to tune,
    and the span's length follows the relevance instead of a regressed offset."""
    n = len(logits)
    spans = span_proposals(n, list(range(1, min(max_frames or n, n) + 1))).to(logits.device)
    score = span_sums(logits, spans)
    props = torch.stack([spans[:, 0] * frame_seconds, (spans[:, 1] * frame_seconds).clamp(max=duration), score], 1)
    return temporal_nms(props, iou_threshold, max_keep)


def span_proposals(num_frames: int, lengths: list[int], hop: int = 1) -> torch.Tensor:
    """Every span of each length in ``lengths`` (frames) every ``hop`` frames: (P, 2) [first, last + 1]."""
    spans = [torch.stack([torch.arange(0, num_frames - n + 1, hop), torch.arange(0, num_frames - n + 1, hop) + n], 1)
             for n in lengths if n <= num_frames]
    return torch.cat(spans) if spans else torch.tensor([[0, num_frames]])


def span_sums(frames: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Sum of the frames (F, ...) of each span [first, last + 1), (P, ...), by one cumulative sum (no loop)."""
    c = torch.cat([torch.zeros_like(frames[:1]), frames.cumsum(0)])
    return c[spans[:, 1]] - c[spans[:, 0]]


def span_means(frames: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean frame of each span, (P, D)."""
    return span_sums(frames, spans) / (spans[:, 1] - spans[:, 0]).to(frames.dtype)[:, None]
