"""Exact scoring of captions against clips in tiles of pairs (bounded memory): the scoring engine.

A co-attention score needs one cascade pass per (caption, clip) pair: Clotho's evaluation split
is 5,225 x 1,045 = 5.46 M passes. Encoders run once per item beforehand; here only the
pair-dependent cascade runs, at most ``tile_pairs`` pairs per forward pass (memory ~ tile_pairs x
(L + T) x max(width, ffn_dim) activations), never ranking inside a batch.

One tiler (``score``) serves every pair set: ``cols`` is either one clip list shared by every
caption row (a grid) or one list per row (shortlists); pair lists are packed into rows first.
Clip tiles are the outer loop, so the cascade's per-clip work (``CoAttentionCascade.clip_stage``:
layer 1 of the ``iterating`` audio stream) runs once per clip tile of a grid; what is hoisted out of
the pair loop, and why, is the cascade's business (coattn/coattention.py).

    score_matrix(model, text, audio)            (N, M): every caption x every clip
    score_matrix(..., shard=(rank, world))      that rank's slice of caption rows (sharded evaluation)
    score_rows(model, text, audio, cols)        (N, R): caption i x clips cols[i, :] (re-ranking)
    score_pair_list(model, text, audio, ti, aj) (P,):   any pair list

All return float32 on the features' device, equal to ``model.score_grid`` / ``model.score_pairs``
up to floating-point rounding (tests/test_scoring_engine.py). Precision: ``"auto"`` is fp32 on CPU and
bf16 autocast on CUDA; ``"bf16"``, ``"fp16"`` and ``"fp32"`` apply on any device.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Literal

import torch

from coattn.coattention import CoAttentionCascade
from coattn.features import PreparedAudio, PreparedText
from coattn.model import CoAttnModel

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def tile_shape(n_text: int, n_audio: int, tile_pairs: int) -> tuple[int, int]:
    """Captions x clips per tile with at most ``tile_pairs`` pairs: all clips of a caption row
    when they fit (fewest passes over the captions), otherwise a slice of the clips."""
    clips = max(1, min(n_audio, tile_pairs))
    captions = max(1, min(n_text, tile_pairs // clips))
    return captions, clips


def n_tiles(n_text: int, n_audio: int, tile_pairs: int) -> int:
    tn, tm = tile_shape(n_text, n_audio, tile_pairs)
    return math.ceil(n_text / tn) * math.ceil(n_audio / tm)


def shard_rows(n_text: int, n_audio: int, tile_pairs: int, rank: int, world: int) -> tuple[int, int]:
    """Captions [lo, hi) that ``rank`` of ``world`` scores in a sharded exact evaluation.

    The slice is a run of whole caption tiles of the one-process tiling (``tile_shape`` of the
    whole grid), tiles split as evenly as they divide: each rank runs exactly the tiles one process
    would (same shapes, same kernels), so the gathered rows are bit-identical to one process's
    matrix (a slice cut inside a tile changes the tile shapes and the float sums: 3e-8 off on the
    features of tests/test_ddp_sharded_eval.py). A rank may get no rows (fewer tiles than ranks).
    """
    tn, _ = tile_shape(n_text, n_audio, tile_pairs)
    tiles = math.ceil(n_text / tn)
    t0, t1 = rank * tiles // world, (rank + 1) * tiles // world
    return min(n_text, t0 * tn), min(n_text, t1 * tn)


def autocast(device: torch.device, precision: Precision = "auto"):
    """``auto``: bf16 autocast on CUDA, nothing (fp32) elsewhere; ``bf16`` / ``fp16``: that autocast on any
    device (CPUs with AMX run bf16 matmuls fast); ``fp32``: nothing."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def uses_fast_path(model: CoAttnModel, text: PreparedText | None = None) -> bool:
    """Whether scoring hoists per-clip and per-caption work (``CoAttentionCascade.hoists``)."""
    return model.cascade.hoists()


# ---------------------------------------------------------------------------------------------
# Progress: a bar on a terminal, a log line every 30 s otherwise, nothing for short jobs.


class _Progress:
    def __init__(self, total: int, enabled: bool | None, min_seconds: float = 1.0, desc: str = "scoring"):
        self.total, self.done, self.enabled, self.min_seconds, self.desc = total, 0, enabled, min_seconds, desc
        self.t0 = self.last_log = time.perf_counter()
        self.bar = None
        self.decided = enabled is False

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.decided:  # after the first tile: show progress only if the job is long
            self.decided = True
            expected = (now - self.t0) / max(1, self.done) * self.total
            if self.enabled or expected > self.min_seconds:
                self.enabled = True
                if sys.stderr.isatty():
                    from tqdm.auto import tqdm
                    self.bar = tqdm(total=self.total, initial=self.done, unit="pair", unit_scale=True,
                                    desc=self.desc, dynamic_ncols=True, leave=False)
                else:
                    log.info("%s %d pairs, about %.0f s", self.desc, self.total, expected)
            else:
                self.enabled = False
            return
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif now - self.last_log >= 30.0:  # non-interactive: a sparse log line with the time left
            self.last_log = now
            rate = self.done / (now - self.t0)
            log.info("%s: %d/%d pairs (%.0f %%), %.0f pairs/s, about %.0f s left", self.desc, self.done,
                     self.total, 100 * self.done / self.total, rate, (self.total - self.done) / max(rate, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# The tiler


@torch.no_grad()
def score(model: CoAttnModel, text: PreparedText, audio: PreparedAudio, cols: torch.Tensor,
          rows: torch.Tensor | None = None, tile_pairs: int = 16384, precision: Precision = "auto",
          progress: bool | None = None, desc: str = "scoring") -> torch.Tensor:
    """Scores of caption ``rows[i]`` (default: caption i) against clips ``cols``: (B, R) float32.

    ``cols``: (R,) the same clips for every row (a grid: each clip tile's per-clip work is done
    once for all its rows), or (B, R) one list per row (its distinct clips per tile are staged once).
    ``progress``: None = a bar/log lines only when the job looks longer than a second, False = never.
    """
    device = audio.states.device
    cols = cols.to(device)
    shared = cols.dim() == 1
    B = len(text) if rows is None and shared else (cols.shape[0] if rows is None else rows.shape[0])
    rows = torch.arange(B, device=device) if rows is None else rows.to(device)
    R = cols.shape[-1]
    out = torch.empty(B, R, dtype=torch.float32, device=device)
    if B == 0 or R == 0:
        return out
    tn, tr = tile_shape(B, R, tile_pairs)
    bar = _Progress(B * R, progress, desc=desc)
    cascade = model.cascade
    try:
        with autocast(device, precision):
            for c0 in range(0, R, tr):
                c1 = min(R, c0 + tr)
                if shared:  # one clip stage for every caption row of this clip tile
                    stage = cascade.clip_stage(audio, cols[c0:c1])
                    inv_row = torch.arange(c1 - c0, device=device)
                for i0 in range(0, B, tn):
                    i1 = min(B, i0 + tn)
                    if shared:
                        inv = inv_row.expand(i1 - i0, -1)
                    else:
                        uniq, inv = torch.unique(cols[i0:i1, c0:c1], return_inverse=True)
                        stage = cascade.clip_stage(audio, uniq)
                    out[i0:i1, c0:c1] = model.score_block(text, rows[i0:i1], stage, inv).float()
                    bar.update((i1 - i0) * (c1 - c0))
    finally:
        bar.close()
    return out


def score_matrix(model: CoAttnModel, text: PreparedText, audio: PreparedAudio, tile_pairs: int = 16384,
                 precision: Precision = "auto", progress: bool | None = None,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
    """(N captions, M clips) cosine scores of the co-attention branch, float32 on the features' device.

    ``shard=(rank, world)``: only the captions ``shard_rows`` gives that rank, (hi - lo, M); the
    caller gathers the slices in rank order (``coattn.distributed.gather_no_grad``)."""
    device = audio.states.device
    clips = torch.arange(len(audio), device=device)
    rows = None
    if shard is not None:
        lo, hi = shard_rows(len(text), len(audio), tile_pairs, *shard)
        rows = torch.arange(lo, hi, device=device)
    return score(model, text, audio, clips, rows, tile_pairs=tile_pairs, precision=precision, progress=progress)


def score_rows(model: CoAttnModel, text: PreparedText, audio: PreparedAudio, cols: torch.Tensor,
               rows: torch.Tensor | None = None, tile_pairs: int = 16384, precision: Precision = "auto",
               progress: bool | None = None) -> torch.Tensor:
    """Scores of caption ``rows[i]`` (default: caption i) against clips ``cols[i, :]``: (B, R) float32:
    the re-ranking shape, every caption with its own shortlist."""
    return score(model, text, audio, cols, rows, tile_pairs, precision, progress, desc="re-scoring")


def score_pair_list(model: CoAttnModel, text: PreparedText, audio: PreparedAudio, ti: torch.Tensor,
                    aj: torch.Tensor, tile_pairs: int = 16384, precision: Precision = "auto",
                    progress: bool | None = None) -> torch.Tensor:
    """Scores of the pairs (caption ti[p], clip aj[p]): (P,) float32. Pairs are grouped by caption
    so that a caption's keys/values are computed once per group (sorted internally, returned in
    the given order)."""
    device = audio.states.device
    ti, aj = ti.to(device), aj.to(device)
    if ti.numel() == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    order = torch.argsort(ti, stable=True)
    ts, as_ = ti[order], aj[order]
    # Pack each caption's clips into rows of width w (shorter groups are padded by repeating
    # their last clip; the padding is dropped).
    caps, counts = torch.unique_consecutive(ts, return_counts=True)
    w = _row_width(counts, tile_pairs)
    offsets = torch.cumsum(counts, 0) - counts
    row_cap, row_cols, row_valid = [], [], []
    ar = torch.arange(w, device=device)
    for c, s, cnt in zip(caps.tolist(), offsets.tolist(), counts.tolist()):
        for k0 in range(0, cnt, w):
            k1 = min(cnt, k0 + w)
            row_cap.append(c)
            row_cols.append(as_[torch.clamp(ar + s + k0, max=s + k1 - 1)])
            row_valid.append(ar < (k1 - k0))
    rows = torch.tensor(row_cap, device=device)
    scores = score_rows(model, text, audio, torch.stack(row_cols), rows, tile_pairs, precision, progress)
    flat = scores[torch.stack(row_valid)]  # in sorted pair order
    out = torch.empty_like(flat)
    out[order] = flat
    return out


def _row_width(counts: torch.Tensor, tile_pairs: int) -> int:
    """Row width for packing groups of ``counts`` pairs: fewest padded pairs, plus a quarter of a
    pair per row for the caption's keys/values (powers of two up to the largest group)."""
    best, best_cost, w = 1, float("inf"), 1
    top = min(int(counts.max()), tile_pairs)
    while True:
        rows = torch.div(counts + w - 1, w, rounding_mode="floor")
        cost = float((rows * w).sum()) + 0.25 * float(rows.sum())
        if cost < best_cost:
            best, best_cost = w, cost
        if w >= top:
            return best
        w = min(2 * w, top)


def executed_flops_per_pair(cascade: CoAttentionCascade, text_len: int, audio_len: int, fast: bool = True,
                            pairs_per_caption: int | None = None) -> float:
    """FLOPs the engine runs per pair (matmuls and attention, 2 per multiply-add).

    ``fast=False`` (or a non-iterating cascade): ``cascade.flops_per_pair``, the naive per-pair
    pass. ``fast=True`` on ``iterating``: minus layer 1's self-attention block and guided query
    (per clip) and minus the guided keys/values of every layer (per caption); those per-item costs
    are amortised over ``pairs_per_caption`` (default: counted as zero, i.e. the large-M limit).
    """
    naive = cascade.flops_per_pair(text_len, audio_len)
    if not fast or cascade.kind != "iterating":
        return float(naive)
    d, T, L = cascade.width, audio_len, text_len
    per_clip = 2 * (4 * T * d * d + 2 * T * T * d + T * d * d)  # layer 1: self q,k,v,o + attention, guided q
    flops = naive - per_clip - cascade.depth * 2 * (2 * L * d * d)  # guided k, v of every layer application
    if pairs_per_caption:  # computed once per caption (per distinct layer) instead
        flops += len(cascade.audio_layers) * 2 * (2 * L * d * d) / pairs_per_caption
    return float(flops)
