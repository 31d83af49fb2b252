"""Co-attention units and the three cascades of Sun et al. (arXiv 2412.20914), MCAN-style.

References: MCAN, Yu et al., "Deep Modular Co-Attention Networks for VQA", CVPR 2019 (SA/GA
units, AttFlat pooling); the paper's cascades: ``single``, ``stacking``, ``iterating``.

Shapes (P = number of caption-clip pairs scored at once, L = tokens, T = audio frames, d = width):

    text  X: (P, L, d), mask mx: (P, L) bool, True = real token
    audio Y: (P, T, d), mask my: (P, T) bool, True = real frame

Units (post-LayerNorm residual blocks, as MCAN):

    SA(X)      = LN(X1 + FFN(X1))                 with X1 = LN(X + MHA(X, X, X; mx))
    SGA(X, Y)  = LN(X2 + FFN(X2))                 with X1 = LN(X + MHA(X, X, X; mx)),
                                                       X2 = LN(X1 + MHA(X1, Y, Y; my))

Cascades (layer n = 1..N; X0, Y0 are the encoders' features projected to width d):

    single     X1 = SGA_1(X0, Y0),  Y1 = SGA'_1(Y0, X0)                          (N = 1)
    stacking   Xn = SGA_n(Xn-1, Yn-1),  Yn = SGA'_n(Yn-1, Xn-1)   both updated in parallel
    iterating  Xn = SA_n(Xn-1)  (text alone: it never sees the audio, hence "fixed"),
               Yn = SGA'_n(Yn-1, XN)   (every audio layer is guided by the final text XN;
               share_weights=True applies one SGA' N times)
    none       no co-attention: the dual-encoder baseline (pooled encoder outputs)

Pooling turns XN, YN into one vector per modality: masked mean, or MCAN's attention pooling
(AttFlat): alpha = softmax_t(MLP(x_t)) over real positions, v = W sum_t alpha_t x_t. Padding never
changes a real position's output (key padding masks, masked pooling; tested by appending padding).

A score needs one cascade pass per (caption, clip) pair (Clotho's evaluation: 5,225 x 1,045 =
5.46 M passes), so the cascade itself moves pair-independent work out of the pair loop. Pairs come
in blocks of b caption rows x r clips (``pair_vectors``); for ``iterating``:

    per caption  XN and its pooled vector (``prepare_text``, once); per block row, the guided keys/
                 values K_n = XN Wk_n, V_n = XN Wv_n, shared by the row's r clips: one attention call
                 per row, its r x T audio queries against its L keys (no per-pair copy of K/V)
    per clip     layer 1's self-attention block LN(Y0 + MHA(Y0, Y0, Y0)) and its guided query
                 (``clip_stage``, in eval mode: see ``hoists``)

The other cascades mix both streams from layer 1 on and run every pair in full.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from coattn.features import PreparedAudio, PreparedText

CascadeKind = Literal["none", "single", "stacking", "iterating"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a boolean key mask (True = real); wraps SDPA (flash on GPU)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"cascade width {width} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        # Opt-in inspection (``capture_attention``): a list that receives the softmax weights of
        # each call; None (the default) costs one attribute check per call.
        self.captured: list[torch.Tensor] | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (P, L, d) -> (P, h, L, d/h)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of contexts (b, Lk, d): (b, h, Lk, d/h) each."""
        return self._split(self.k(ctx)), self._split(self.v(ctx))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None, ctx_mask: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, q: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the queries ``x`` (P, Lq, d) to the contexts ``ctx`` (P, Lk, d), masked by ``ctx_mask``.

        ``kv``: ``keys()`` of b = P / g contexts computed beforehand, each shared by g consecutive rows
        of ``x`` (the g clips of one caption row: no per-pair copy of a caption's keys); ``ctx_mask``
        is then (b, Lk). ``q``: ``self.q(x)`` computed beforehand (per clip, by the hoisted path).
        """
        P, Lq, d = x.shape
        k, v = self.keys(ctx) if kv is None else kv
        b = k.shape[0]
        q = self.q(x) if q is None else q
        q = self._split(q.reshape(b, (P // b) * Lq, d))  # (b, h, g*Lq, d/h): g pairs' queries share b's keys
        # (b, 1, 1, Lk): broadcast over heads and queries. A row whose keys are all padding would
        # give NaN; the data never produces one (every caption/clip has >= 1 real position).
        attn_mask = ctx_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        if self.captured is not None:  # SDPA does not return its weights: recompute them (no dropout)
            logits = (q @ k.to(q.dtype).transpose(-2, -1)) / math.sqrt(q.shape[-1])
            w = logits.masked_fill(~attn_mask, float("-inf")).softmax(-1)  # (b, h, g*Lq, Lk)
            w = w if getattr(self.captured, "keep_grad", False) else w.detach()
            self.captured.append(w.unflatten(2, (P // b, Lq)).transpose(1, 2).flatten(0, 1))  # (P, h, Lq, Lk)
        return self.out(y.transpose(1, 2).reshape(P, Lq, d))


@contextmanager
def capture_attention(module: nn.Module, which: Literal["guided", "self", "all"] = "guided", keep_grad: bool = False):
    """Record the attention weights of the ``MultiHeadAttention`` layers under ``module``.

    Yields a dict ``{qualified name: [weights of call 1, call 2, ...]}``, each (P, heads, Lq, Lk)
    (softmax(QK^T / sqrt(d_head)) with the key mask, before dropout). ``which`` selects the
    guided (cross-modal) attentions, the self-attentions or both. A layer applied N times
    (``iterating`` with ``share_weights``) records N entries. Outside the context nothing is
    recorded and the forward pass is unchanged. ``keep_grad``: the maps keep their graph (a loss on them)::

        with torch.no_grad(), capture_attention(model.cascade) as maps:
            model.score_pairs(...)
        maps["audio_layers.0.guided_attn"][0]   # (P, h, frames, words): audio queries the text
    """
    def wanted(name: str) -> bool:  # SGA.guided_attn is cross-modal; SGA.self_attn and SA.attn are not
        guided = name.rsplit(".", 1)[-1] == "guided_attn"
        return which == "all" or guided == (which == "guided")

    targets = {name: m for name, m in module.named_modules() if isinstance(m, MultiHeadAttention) and wanted(name)}
    cascades = [m for m in module.modules() if isinstance(m, CoAttentionCascade)]
    maps: dict[str, list[torch.Tensor]] = {}
    for name, m in targets.items():
        m.captured = maps.setdefault(name, _Maps())
        m.captured.keep_grad = keep_grad
    for c in cascades:  # per-pair maps: no per-clip hoisting while recording (CoAttentionCascade.hoists)
        c.capturing += 1
    try:
        yield maps
    finally:
        for m in targets.values():
            m.captured = None
        for c in cascades:
            c.capturing -= 1


class _Maps(list):
    keep_grad = False


class FeedForward(nn.Sequential):
    def __init__(self, width: int, ffn_dim: int, dropout: float):
        super().__init__(nn.Linear(width, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(ffn_dim, width))


class SA(nn.Module):
    """Self-attention unit: LN(X + MHA(X,X,X)), then LN(X + FFN(X))."""

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(width, heads, dropout)
        self.ffn = FeedForward(width, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, x, mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class SGA(nn.Module):
    """Self-guided-attention unit: self-attention, then attention to the other modality, then FFN.

    ``attend_self`` and ``attend_guide`` are its two halves: the hoisted ``iterating`` path runs the
    first once per clip (it reads only the clip) and the second once per pair.
    """

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(width, heads, dropout)
        self.guided_attn = MultiHeadAttention(width, heads, dropout)
        self.ffn = FeedForward(width, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def attend_self(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm1(x + self.drop(self.self_attn(x, x, mask)))

    def attend_guide(self, x: torch.Tensor, guide: torch.Tensor | None, guide_mask: torch.Tensor,
                     kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                     q: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm2(x + self.drop(self.guided_attn(x, guide, guide_mask, kv=kv, q=q)))
        return self.norm3(x + self.drop(self.ffn(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor,
                guide_mask: torch.Tensor) -> torch.Tensor:
        return self.attend_guide(self.attend_self(x, mask), guide, guide_mask)


class AttentionPool(nn.Module):
    """MCAN's AttFlat: a 2-layer MLP scores each position, masked softmax, weighted sum, linear."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(width, 1))
        self.merge = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = logits.softmax(dim=-1)
        return self.merge(torch.einsum("pl,pld->pd", alpha, x))


class MeanPool(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions: (P, L, d), (P, L) -> (P, d)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def sinusoidal_positions(n: int, width: int) -> torch.Tensor:
    """Transformer positions (Vaswani et al. 2017): sin/cos of position / 10000^(2i/d), (n, width)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float32) / width)
    table = torch.zeros(n, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return table


def relative_positions(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(B, L, width) sin/cos of u * omega_k, u = (position + 1/2) / real length in [0, 1], omega_k from
    pi to 64 pi (geometric): one basis for frames and tokens; padding gets zeros."""
    n = mask.sum(1, keepdim=True).clamp_min(1).to(torch.float32)
    u = (torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None, :] + 0.5) / n
    omega = torch.exp(torch.linspace(0.0, math.log(64.0), width // 2, device=mask.device)) * math.pi
    angle = u[..., None] * omega
    table = torch.zeros(*mask.shape, width, device=mask.device)
    table[..., 0:2 * (width // 2):2], table[..., 1:2 * (width // 2):2] = angle.sin(), angle.cos()
    return table * mask[..., None]


def _audio_layer(layer: SGA, y: torch.Tensor, my: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 guide_mask: torch.Tensor, q: torch.Tensor | None, attend_self: bool) -> torch.Tensor:
    """One iterating audio layer on precomputed guide keys/values (one unit of activation checkpointing)."""
    if attend_self:
        y = layer.attend_self(y, my)
    return layer.attend_guide(y, None, guide_mask, kv=(k, v), q=q)


@dataclass
class ClipStage:
    """The clips of one scoring tile, ready for their pairs: frames (u, T, d) and mask (u, T). When the cascade
    hoists (``CoAttentionCascade.hoists``) layer 1's self-attention block and its guided query, which read only the
    clip, are already applied: ``states`` is that block's output and ``query`` its guided-attention query projection
    (u, T, d); otherwise ``query`` is None. ``inputs``: the cascade's input frames in training and evaluation alike
    (``count_audio: clip`` reads them)."""

    states: torch.Tensor
    mask: torch.Tensor
    query: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


class CoAttentionCascade(nn.Module):
    """One of the paper's cascades at width ``width`` (the encoders are projected to it).

    Args:
        kind: ``single`` (one bidirectional layer), ``stacking`` (N bidirectional layers),
            ``iterating`` (text refined alone, guiding N audio layers) or ``none`` (no
            co-attention; the model then scores with the dual-encoder branch alone).
        depth: N, the number of layers (``single`` forces 1).
        width: model width d of the co-attention layers.
        heads: attention heads (width must be divisible by heads).
        ffn_dim: hidden size of the feed-forward blocks (MCAN: 4 x width).
        dropout: dropout in attention, feed-forward and pooling.
        pooling: ``attention`` (MCAN AttFlat) or ``mean`` (masked mean).
        share_weights: ``iterating`` only: apply one audio layer N times (and one text layer).
        positions: temporal positions added at the cascade's input: ``none``; ``learned`` (a
            (max_frames, d) table) or ``sinusoidal`` (fixed) on the audio frames; ``relative``: every
            frame's place in its clip and every token's place in its caption, as a fraction in [0, 1],
            through one shared sinusoidal basis, so that attention can align "early in the sentence"
            with "early in the clip" (captions mostly name events in the order they happen). Attention
            and pooling are permutation invariant: without positions "A then B" and "B then A" are the
            same set of frames to the cascade (HTS-AT's frames carry little absolute time).
        max_frames: longest audio sequence the position table covers (HTS-AT: 32 frames per 10 s).
        checkpointing: activation checkpointing in training: each layer keeps only its input and
            recomputes its activations in the backward pass (``torch.utils.checkpoint``, non-reentrant,
            dropout replayed: the same gradients). A B x B training step holds B^2 pair streams of
            (T, d) through N layers; this trades about one more forward of the cascade for keeping one
            layer's activations at a time: at B = 32 (iterating, width 512, depth 5, fp32) the step's
            memory fell 4.1x (10.2 -> 2.5 GB) for +8 % time (docs/benchmarks.md, "Full size on CPU").
            No effect in evaluation.
    """

    def __init__(self, kind: CascadeKind = "iterating", depth: int = 3, width: int = 512,
                 heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1,
                 pooling: Literal["attention", "mean"] = "attention", share_weights: bool = False,
                 positions: Literal["none", "learned", "sinusoidal", "relative"] = "none", max_frames: int = 64,
                 checkpointing: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"cascade depth must be >= 1, got {depth}")
        if share_weights and kind != "iterating":
            raise ValueError("share_weights applies to the iterating cascade only")
        self.kind, self.width, self.checkpointing = kind, width, checkpointing
        self.depth = 1 if kind == "single" else depth
        self.capturing = 0  # > 0 inside capture_attention: no hoisting (per-pair maps)
        if positions not in ("none", "learned", "sinusoidal", "relative"):
            raise ValueError(f"positions must be 'none', 'learned', 'sinusoidal' or 'relative', got {positions!r}")
        self.positions = positions
        if kind == "none":
            return
        if positions == "learned":  # ViT/BERT-style table, small init so it does not drown the features
            self.audio_positions = nn.Parameter(torch.randn(max_frames, width) * 0.02)
        elif positions == "sinusoidal":
            self.register_buffer("audio_positions", sinusoidal_positions(max_frames, width), persistent=False)
        args = (width, heads, ffn_dim, dropout)
        n_unique = 1 if share_weights else self.depth
        if kind == "iterating":
            self.text_layers = nn.ModuleList(SA(*args) for _ in range(n_unique))
        else:
            self.text_layers = nn.ModuleList(SGA(*args) for _ in range(n_unique))
        self.audio_layers = nn.ModuleList(SGA(*args) for _ in range(n_unique))
        pool = (lambda: AttentionPool(width, dropout)) if pooling == "attention" else MeanPool
        self.text_pool, self.audio_pool = pool(), pool()

    def _layer(self, layers: nn.ModuleList, n: int) -> nn.Module:
        return layers[n % len(layers)]  # shared weights: one layer reused N times

    def _run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, activation-checkpointed when ``checkpointing`` applies (training, grads on)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def hoists(self) -> bool:
        """Whether layer 1's self-attention block and guided query run once per clip, not per pair.

        They read only the clip, so for ``iterating`` in eval mode they are pair-independent; in
        training dropout draws per pair, and under ``capture_attention`` every map must be per pair.
        """
        return self.kind == "iterating" and not self.training and not self.capturing

    # ---- per caption, per clip: done once, not once per pair ------------------------------------
    def prepare_text(self, states: torch.Tensor, mask: torch.Tensor) -> PreparedText:
        """Work that depends on the caption only; done once per caption, not once per pair."""
        if self.positions == "relative" and self.kind != "none":
            states = states + relative_positions(mask, self.width).to(states.dtype)
        if self.kind != "iterating":
            return PreparedText(states, mask)
        for n in range(self.depth):
            states = self._run(self._layer(self.text_layers, n), states, mask)
        return PreparedText(states, mask, self.text_pool(states, mask))

    def prepare_audio(self, states: torch.Tensor, mask: torch.Tensor) -> PreparedAudio:
        """The cascade's per-clip input: frames at width d plus their temporal positions (if any)."""
        if self.positions == "relative" and self.kind != "none":
            states = states + relative_positions(mask, self.width).to(states.dtype)
        elif self.positions != "none" and self.kind != "none":
            if states.shape[1] > self.audio_positions.shape[0]:
                raise ValueError(f"{states.shape[1]} audio frames but positions for {self.audio_positions.shape[0]}: "
                                 "raise the cascade's max_frames")
            states = states + self.audio_positions[: states.shape[1]].to(states.dtype)
        return PreparedAudio(states, mask)

    def clip_stage(self, audio: PreparedAudio, clips: torch.Tensor) -> ClipStage:
        """The clips ``clips`` of ``audio`` ready for their pairs (hoisted work applied, see ``hoists``)."""
        y, my = audio.states[clips], audio.mask[clips]
        if not self.hoists():
            return ClipStage(y, my, inputs=y)
        first = self.audio_layers[0]
        h = first.attend_self(y, my)
        return ClipStage(h, my, first.guided_attn.q(h), inputs=y)

    # ---- per pair -------------------------------------------------------------------------------
    def pair_vectors(self, text: PreparedText, rows: torch.Tensor, stage: ClipStage,
                     inv: torch.Tensor, frames: bool = False) -> tuple[torch.Tensor, ...]:
        """Pooled vectors of the b x r pairs (caption ``rows[i]``, clip ``inv[i, c]`` of ``stage``).

        Returns (text, audio): audio (b, r, d); text (b, r, d), or (b, d) for ``iterating``, whose
        text vector does not depend on the clip. Any pair set is a block: a grid (training, exact
        evaluation: inv = arange(M) on every row), shortlists (re-ranking), single pairs (r = 1). ``frames``
        (iterating): also the unpooled audio stream (b r, T, d) and its mask (the count head reads it).
        """
        if self.kind == "none" or (frames and self.kind != "iterating"):
            raise RuntimeError(f"cascade kind {self.kind!r} has no per-pair audio stream here; score with the dual "
                               "branch (none) or use iterating")
        b, r = inv.shape
        flat = inv.reshape(-1)
        y, my = stage.states[flat], stage.mask[flat]  # (b r, T, d): row i's r clips are consecutive
        if self.kind == "iterating":
            y = self.pair_frames(text, rows, stage, inv)
            return (text.pooled[rows], self.audio_pool(y, my).view(b, r, -1), *((y, my) if frames else ()))
        ti = rows.repeat_interleave(r)
        x, mx = text.states[ti], text.mask[ti]
        for n in range(self.depth):  # single / stacking: both streams read the previous layer
            x, y = (self._run(self.text_layers[n], x, mx, y, my), self._run(self.audio_layers[n], y, my, x, mx))
        return self.text_pool(x, mx).view(b, r, -1), self.audio_pool(y, my).view(b, r, -1)

    def pair_frames(self, text: PreparedText, rows: torch.Tensor, stage: ClipStage, inv: torch.Tensor) -> torch.Tensor:
        """``iterating``: the text-conditioned audio stream YN of the b x r pairs, (b r, T, d), row i's r
        clips consecutive (``pair_vectors`` pools it; the moment head reads it frame by frame)."""
        if self.kind != "iterating":
            raise RuntimeError(f"pair_frames needs the iterating cascade (a per-pair audio stream), not {self.kind!r}")
        flat = inv.reshape(-1)
        xn, mx = text.states[rows], text.mask[rows]
        # each caption row's keys/values, computed once and shared by its r clips (no copy per pair)
        kv = [layer.guided_attn.keys(xn) for layer in self.audio_layers]
        q = None if stage.query is None else stage.query[flat]
        return self._audio_stream(stage.states[flat], stage.mask[flat], kv, mx, first_query=q)

    def _audio_stream(self, y: torch.Tensor, my: torch.Tensor, kv: list, guide_mask: torch.Tensor,
                      first_query: torch.Tensor | None) -> torch.Tensor:
        """The iterating audio layers, Yn = SGA'_n(Yn-1, XN), with XN's keys/values ``kv`` per
        distinct layer. ``first_query`` given: layer 1's self-attention block already ran per clip."""
        for n in range(self.depth):
            layer = self._layer(self.audio_layers, n)
            hoisted = n == 0 and first_query is not None
            k, v = kv[n % len(kv)]
            y = self._run(_audio_layer, layer, y, my, k, v, guide_mask, first_query if hoisted else None, not hoisted)
        return y

    def forward(self, text: PreparedText, ti: torch.Tensor, audio: PreparedAudio,
                aj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled text and audio vectors of the P pairs (caption ``ti[p]``, clip ``aj[p]``): (P, d) each."""
        uniq, inv = torch.unique(aj, return_inverse=True)
        t, a = self.pair_vectors(text, ti, self.clip_stage(audio, uniq), inv[:, None])
        return (t if t.dim() == 2 else t[:, 0]), a[:, 0]

    def flops_per_pair(self, text_len: int, audio_len: int) -> int:
        """Multiply-accumulates x 2 of one naive per-pair pass: attention, projections, FFNs and
        the per-pair pooling (matmuls only: norms, softmax and residuals are not counted)."""
        if self.kind == "none":
            return 0
        d, f = self.width, self.audio_layers[0].ffn[0].out_features

        def sga(lq: int, lk: int) -> int:
            proj = 4 * lq * d * d + 2 * lk * d * d + 2 * lq * d * d  # self q,k,v,o + guided k,v + q,o
            attn = 2 * (lq * lq * d) + 2 * (lq * lk * d)  # QK^T and AV, self and guided
            return 2 * (proj + attn + 2 * lq * d * f)

        def pool(length: int) -> int:  # AttFlat: MLP scores (d x d, d x 1), weighted sum, merge (d x d)
            return 2 * (length * d * d + 2 * length * d + d * d) if isinstance(self.audio_pool, AttentionPool) else 0

        per_layer = sga(audio_len, text_len)
        pooling = pool(audio_len)  # iterating: the text vector is pooled once per caption
        if self.kind != "iterating":
            per_layer += sga(text_len, audio_len)
            pooling += pool(text_len)
        return self.depth * per_layer + pooling
