"""Exact scoring of captions against clips, in tiles of pairs (bounded memory): the scoring engine.

A co-attention score needs one cascade pass per (caption, clip) pair: Clotho's evaluation split
is 5,225 x 1,045 = 5.46 M passes. Encoders run once per item beforehand; here only the
pair-dependent cascade runs, ``tile_pairs`` pairs per forward pass (memory ~ tile_pairs x
(L + T) x max(width, ffn_dim) activations), never ranking inside a batch.

Entry points (all return float32 on the features' device, identical to ``model.score_grid`` /
``model.score_pairs`` up to floating-point rounding; tests/test_scoring_engine.py checks it):

    score_matrix(model, text, audio)            (N, M): every caption x every clip
    score_rows(model, text, audio, cols)        (N, R): caption i x clips cols[i, :] (re-ranking)
    score_pair_list(model, text, audio, ti, aj) (P,):   any pair list

Work hoisted out of the pair loop for the ``iterating`` cascade (eval mode; its text stream is
pair-independent, so ``model.prepare_text`` already ran it once per caption):

    per caption  the guided-attention keys/values of every audio layer, K_n = XN Wk_n, V_n = XN Wv_n
                 (computed once per tile row instead of once per pair)
    per clip     layer 1's self-attention block LN(Y0 + MHA(Y0, Y0, Y0)) and its guided query
                 projection (both read only Y0: computed once per clip tile)
    per tile     the guided attention of all R clips of a caption row is one attention call whose
                 R x T queries share that caption's L keys (no per-pair copy of K/V)

The other cascades (``single``, ``stacking``) and a model in training mode take the generic path:
``model.score_pairs`` on each tile (same tiling, progress and autocast). Precision: fp32 on CPU;
on CUDA ``precision="auto"`` autocasts to bf16 (``"fp16"`` and ``"fp32"`` on request).
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Literal

import torch
import torch.nn.functional as F

from coattn.coattention import CoAttentionCascade, PreparedText
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


def autocast(device: torch.device, precision: Precision = "auto"):
    """bf16 (``auto``/``bf16``) or fp16 autocast on CUDA; nothing (fp32) elsewhere."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def uses_fast_path(model: CoAttnModel, text: PreparedText) -> bool:
    """The hoisted ``iterating`` path: eval mode (no dropout) and no attention capture active
    (``coattention.capture_attention`` records weights inside ``MultiHeadAttention.forward``,
    which the fast path bypasses for the guided attention)."""
    if model.cascade.kind != "iterating" or model.training or text.pooled is None:
        return False
    return all(getattr(m, "captured", None) is None for m in model.cascade.modules())


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
# The iterating fast path


class _IteratingEngine:
    """Scores blocks (b caption rows x r clips each) of an ``iterating`` cascade, hoisting the
    pair-independent work (see the module docstring). Mirrors ``SGA.forward`` / ``MultiHeadAttention``
    in eval mode (dropout off), so the maths is that of ``CoAttentionCascade.forward``."""

    def __init__(self, model: CoAttnModel, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor]):
        self.model, self.cascade, self.text, self.audio = model, model.cascade, text, audio
        self._clips_key: tuple | None = None
        self._clips: tuple[torch.Tensor, ...] | None = None

    def clip_state(self, uniq: torch.Tensor, key: tuple | None) -> tuple[torch.Tensor, ...]:
        """Layer 1's self-attention block and guided query for the clips ``uniq``: (u, T, d) each."""
        if key is not None and key == self._clips_key:
            return self._clips
        y0, my = self.audio[0][uniq], self.audio[1][uniq]
        first = self.cascade.audio_layers[0]
        y1 = first.norm1(y0 + first.self_attn(y0, y0, my))
        self._clips_key, self._clips = key, (y1, first.guided_attn.q(y1), my)
        return self._clips

    def caption_state(self, rows: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Guided keys/values of every (unique) audio layer for the captions ``rows``: (b, h, L, d/h)."""
        xn = self.text.states[rows]
        kv = [(layer.guided_attn._split(layer.guided_attn.k(xn)), layer.guided_attn._split(layer.guided_attn.v(xn)))
              for layer in self.cascade.audio_layers]
        return kv, self.text.mask[rows][:, None, None, :]

    def block(self, rows: torch.Tensor, uniq: torch.Tensor, inv: torch.Tensor, clips_key: tuple | None) -> torch.Tensor:
        """Scores of caption ``rows[i]`` x clip ``uniq[inv[i, c]]``: (b, r)."""
        cascade = self.cascade
        b, r = inv.shape
        y1, q1, my_u = self.clip_state(uniq, clips_key)
        T, d = y1.shape[1], y1.shape[2]
        P = b * r
        kv, guide_mask = self.caption_state(rows)
        y, q, my = y1[inv].view(P, T, d), q1[inv].view(P, T, d), my_u[inv].view(P, T)
        for n in range(cascade.depth):
            layer = cascade._layer(cascade.audio_layers, n)
            if n > 0:  # pair-dependent from layer 2 on
                y = layer.norm1(y + layer.self_attn(y, y, my))
                q = layer.guided_attn.q(y)
            g = layer.guided_attn
            k, v = kv[n % len(cascade.audio_layers)]
            # One attention per caption row: its r x T audio queries against its L text keys.
            qh = q.view(b, r * T, d).unflatten(-1, (g.heads, -1)).transpose(1, 2)
            att = F.scaled_dot_product_attention(qh, k.to(qh.dtype), v.to(qh.dtype), attn_mask=guide_mask)
            att = g.out(att.transpose(1, 2).flatten(2)).view(P, T, d)
            y = layer.norm2(y + att)
            y = layer.norm3(y + layer.ffn(y))
        a = self.model.pair_audio(cascade.audio_pool(y, my))  # (P, E)
        t = self.text.pooled[rows]  # (b, E): already projected by model.prepare_text
        return (a.view(b, r, -1) * t[:, None, :].to(a.dtype)).sum(-1)


def _generic_block(model: CoAttnModel, text: PreparedText, audio, rows: torch.Tensor,
                   cols: torch.Tensor) -> torch.Tensor:
    b, r = cols.shape
    return model.score_pairs(text, rows.repeat_interleave(r), audio, cols.reshape(-1)).view(b, r)


# ---------------------------------------------------------------------------------------------
# Public API


@torch.no_grad()
def score_matrix(model: CoAttnModel, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor],
                 tile_pairs: int = 16384, precision: Precision = "auto", progress: bool | None = None) -> torch.Tensor:
    """(N captions, M clips) cosine scores of the co-attention branch, float32 on the features' device.

    Tiles of ``tile_shape(N, M, tile_pairs)``; clip tiles are the outer loop so each clip's
    layer-1 work is done once per clip tile. ``progress``: None = a bar/log lines only when the
    job looks longer than a second, False = never, True = always.
    """
    n, m = len(text), audio[0].shape[0]
    device = audio[0].device
    out = torch.empty(n, m, dtype=torch.float32, device=device)
    tn, tm = tile_shape(n, m, tile_pairs)
    fast = uses_fast_path(model, text)
    engine = _IteratingEngine(model, text, audio) if fast else None
    bar = _Progress(n * m, progress)
    try:
        with autocast(device, precision):
            for j0 in range(0, m, tm):
                j1 = min(m, j0 + tm)
                uniq = torch.arange(j0, j1, device=device)
                for i0 in range(0, n, tn):
                    i1 = min(n, i0 + tn)
                    rows = torch.arange(i0, i1, device=device)
                    if fast:
                        inv = torch.arange(j1 - j0, device=device).expand(i1 - i0, -1)
                        out[i0:i1, j0:j1] = engine.block(rows, uniq, inv, clips_key=(j0, j1)).float()
                    else:
                        out[i0:i1, j0:j1] = _generic_block(model, text, audio, rows, uniq.expand(i1 - i0, -1)).float()
                    bar.update((i1 - i0) * (j1 - j0))
    finally:
        bar.close()
    return out


@torch.no_grad()
def score_rows(model: CoAttnModel, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor],
               cols: torch.Tensor, rows: torch.Tensor | None = None, tile_pairs: int = 16384,
               precision: Precision = "auto", progress: bool | None = None) -> torch.Tensor:
    """Scores of caption ``rows[i]`` (default: caption i) against clips ``cols[i, :]``: (B, R) float32.

    The re-ranking shape: every caption with its own shortlist of R clips. Rows are tiled by
    ``tile_pairs // R`` (columns too when R > tile_pairs).
    """
    device = audio[0].device
    cols = cols.to(device)
    rows = torch.arange(cols.shape[0], device=device) if rows is None else rows.to(device)
    B, R = cols.shape
    out = torch.empty(B, R, dtype=torch.float32, device=device)
    if B == 0 or R == 0:
        return out
    tn, tr = tile_shape(B, R, tile_pairs)
    fast = uses_fast_path(model, text)
    engine = _IteratingEngine(model, text, audio) if fast else None
    bar = _Progress(B * R, progress, desc="re-scoring")
    try:
        with autocast(device, precision):
            for c0 in range(0, R, tr):
                c1 = min(R, c0 + tr)
                for i0 in range(0, B, tn):
                    i1 = min(B, i0 + tn)
                    block = cols[i0:i1, c0:c1]
                    if fast:
                        uniq, inv = torch.unique(block, return_inverse=True)
                        key = (uniq.shape[0], uniq.tolist()) if uniq.shape[0] <= 4096 else None
                        out[i0:i1, c0:c1] = engine.block(rows[i0:i1], uniq, inv, clips_key=key).float()
                    else:
                        out[i0:i1, c0:c1] = _generic_block(model, text, audio, rows[i0:i1], block).float()
                    bar.update((i1 - i0) * (c1 - c0))
    finally:
        bar.close()
    return out


def score_pair_list(model: CoAttnModel, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor],
                    ti: torch.Tensor, aj: torch.Tensor, tile_pairs: int = 16384, precision: Precision = "auto",
                    progress: bool | None = None) -> torch.Tensor:
    """Scores of the pairs (caption ti[p], clip aj[p]): (P,) float32. Pairs are grouped by caption
    so that a caption's keys/values are computed once per group (sorted internally, returned in
    the given order)."""
    device = audio[0].device
    ti, aj = ti.to(device), aj.to(device)
    if ti.numel() == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    order = torch.argsort(ti, stable=True)
    ts, as_ = ti[order], aj[order]
    # Pack each caption's clips into rows of width w (the most frequent count is a good width;
    # shorter groups are padded by repeating their last clip, the padding is dropped).
    caps, starts = torch.unique_consecutive(ts, return_counts=True)
    w = _row_width(starts, tile_pairs)
    offsets = torch.cumsum(starts, 0) - starts
    row_cap, row_cols, row_valid = [], [], []
    ar = torch.arange(w, device=device)
    for c, s, cnt in zip(caps.tolist(), offsets.tolist(), starts.tolist()):
        for k0 in range(0, cnt, w):
            k1 = min(cnt, k0 + w)
            idx = torch.clamp(ar + s + k0, max=s + k1 - 1)
            row_cap.append(c)
            row_cols.append(as_[idx])
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
