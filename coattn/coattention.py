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
(AttFlat): alpha = softmax_t(MLP(x_t)) over real positions, v = W sum_t alpha_t x_t.

Padding never changes a real position's output: every attention takes a key padding mask and
every pooling a masked softmax/mean, which the tests check by appending padding.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(ctx)), self._split(self.v(ctx))
        # (P, 1, 1, Lk): broadcast over heads and queries. A row whose keys are all padding would
        # give NaN; the data never produces one (every caption/clip has >= 1 real position).
        attn_mask = ctx_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        if self.captured is not None:  # SDPA does not return its weights: recompute them (no dropout)
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            self.captured.append(logits.masked_fill(~attn_mask, float("-inf")).softmax(-1).detach())
        return self.out(y.transpose(1, 2).flatten(2))


@contextmanager
def capture_attention(module: nn.Module, which: Literal["guided", "self", "all"] = "guided"):
    """Record the attention weights of the ``MultiHeadAttention`` layers under ``module``.

    Yields a dict ``{qualified name: [weights of call 1, call 2, ...]}``, each (P, heads, Lq, Lk)
    (softmax(QK^T / sqrt(d_head)) with the key mask, before dropout). ``which`` selects the
    guided (cross-modal) attentions, the self-attentions or both. A layer applied N times
    (``iterating`` with ``share_weights``) records N entries. Outside the context nothing is
    recorded and the forward pass is unchanged::

        with torch.no_grad(), capture_attention(model.cascade) as maps:
            model.score_pairs(...)
        maps["audio_layers.0.guided_attn"][0]   # (P, h, frames, words): audio queries the text
    """
    def wanted(name: str) -> bool:  # SGA.guided_attn is cross-modal; SGA.self_attn and SA.attn are not
        guided = name.rsplit(".", 1)[-1] == "guided_attn"
        return which == "all" or guided == (which == "guided")

    targets = {name: m for name, m in module.named_modules() if isinstance(m, MultiHeadAttention) and wanted(name)}
    maps: dict[str, list[torch.Tensor]] = {}
    for name, m in targets.items():
        m.captured = maps.setdefault(name, [])
    try:
        yield maps
    finally:
        for m in targets.values():
            m.captured = None


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
    """Self-guided-attention unit: self-attention, then attention to the other modality, then FFN."""

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(width, heads, dropout)
        self.guided_attn = MultiHeadAttention(width, heads, dropout)
        self.ffn = FeedForward(width, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor,
                guide_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, x, mask)))
        x = self.norm2(x + self.drop(self.guided_attn(x, guide, guide_mask)))
        return self.norm3(x + self.drop(self.ffn(x)))


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


@dataclass
class PreparedText:
    """Per-caption work done once (not per pair): the input to every cascade's text stream.

    For ``iterating`` the whole text stream is pair-independent, so ``states`` is already XN and
    ``pooled`` its pooled vector; for the other cascades ``pooled`` is None.
    """

    states: torch.Tensor  # (N, L, d)
    mask: torch.Tensor  # (N, L)
    pooled: torch.Tensor | None = None  # (N, d)

    def __len__(self) -> int:
        return self.states.shape[0]


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
    """

    def __init__(self, kind: CascadeKind = "iterating", depth: int = 3, width: int = 512,
                 heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1,
                 pooling: Literal["attention", "mean"] = "attention", share_weights: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"cascade depth must be >= 1, got {depth}")
        if share_weights and kind != "iterating":
            raise ValueError("share_weights applies to the iterating cascade only")
        self.kind, self.width = kind, width
        self.depth = 1 if kind == "single" else depth
        if kind == "none":
            return
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

    def prepare_text(self, states: torch.Tensor, mask: torch.Tensor) -> PreparedText:
        """Work that depends on the caption only; done once per caption, not once per pair."""
        if self.kind != "iterating":
            return PreparedText(states, mask)
        for n in range(self.depth):
            states = self._layer(self.text_layers, n)(states, mask)
        return PreparedText(states, mask, self.text_pool(states, mask))

    def forward(self, text: PreparedText, ti: torch.Tensor, audio: torch.Tensor,
                audio_mask: torch.Tensor, aj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the cascade on the P pairs (caption ``ti[p]``, clip ``aj[p]``).

        Returns the pooled text and audio vectors of each pair, (P, d) each. Indexing inside
        keeps callers free to score a full grid (training, exact evaluation) or any pair list
        (re-ranking a shortlist) with the same code.
        """
        if self.kind == "none":
            raise RuntimeError("cascade kind 'none' has no pairwise stage; score with the dual branch")
        y, my = audio[aj], audio_mask[aj]
        xN, mx = text.states[ti], text.mask[ti]
        if self.kind == "iterating":
            for n in range(self.depth):
                y = self._layer(self.audio_layers, n)(y, my, xN, mx)
            return text.pooled[ti], self.audio_pool(y, my)
        x = xN
        for n in range(self.depth):  # single / stacking: both streams read the previous layer
            x, y = (self.text_layers[n](x, mx, y, my), self.audio_layers[n](y, my, x, mx))
        return self.text_pool(x, mx), self.audio_pool(y, my)

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
