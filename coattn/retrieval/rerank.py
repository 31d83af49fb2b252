"""Two-stage retrieval: shortlist with the dual encoder (one matmul), re-rank with the cascade.

    stage 1  s_dual = E_text @ E_audio^T                               (N, M), one matrix product
             t2a shortlist: the K best clips of every caption           (N x K pairs)
             a2t shortlist: the K best captions of every clip           (K x M pairs)
    stage 2  the cascade scores the union U of both shortlists          (|U| <= K (N + M) passes)

The result is a full (N, M) matrix, so every metric (t2a and a2t) is computed exactly as for the
exact mode:

    S[i, j] = s_pair(i, j)                                              (i, j) in U
    S[i, j] = s_dual(i, j) - max(s_dual) + min_U s_pair - 1             otherwise

Every entry outside U is strictly below every re-scored entry (of any row or column), and keeps
its dual-encoder order among the other entries outside U. Hence a caption's ranking is: its
shortlisted clips (plus any clip whose own a2t shortlist holds that caption, which the cascade
scored anyway) in cascade order, then every other clip in dual order; a clip's caption ranking
likewise. With K >= M (t2a) and K >= N (a2t) every pair is re-scored: the exact matrix.

Shortlists use a stable descending sort (ties: lower index first), the metrics' tie rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coattn.features import PreparedAudio, PreparedText
from coattn.metrics import topk
from coattn.model import CoAttnModel
from coattn.retrieval.tiling import Precision, score_pair_list, score_rows


@dataclass
class RerankInfo:
    k: int
    cascade_passes: int  # |U|: pairs the cascade scored
    exact_passes: int  # N * M

    @property
    def cost_fraction(self) -> float:
        return self.cascade_passes / max(1, self.exact_passes)

    def as_dict(self) -> dict:
        return {"retrieval_mode": "rerank", "rerank_k": self.k, "cascade_passes": self.cascade_passes,
                "cascade_passes_exact": self.exact_passes, "cascade_cost_fraction": self.cost_fraction}


def shortlist_mask(dual: torch.Tensor, k: int, both_directions: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2a shortlist (N, K) clip indices, U as an (N, M) bool mask)."""
    n, m = dual.shape
    cols = topk(dual, k, dim=1)
    mask = torch.zeros(n, m, dtype=torch.bool, device=dual.device)
    mask.scatter_(1, cols, True)
    if both_directions:
        rows = topk(dual, k, dim=0)  # (K, M): the K best captions of each clip
        mask.scatter_(0, rows, True)
    return cols, mask


def compose(rescored: torch.Tensor, mask: torch.Tensor, dual: torch.Tensor, fusion: float = 0.0) -> torch.Tensor:
    """The full (N, M) matrix from the cascade's scores on U (``mask``): ``rescored + fusion * dual``
    there, and below every one of them, in dual order, elsewhere (module docstring)."""
    inside = rescored + fusion * dual if fusion else rescored
    floor = inside[mask].min()
    return torch.where(mask, inside, dual - dual.max() + floor - 1.0)


@torch.no_grad()
def rerank_matrix(model: CoAttnModel, text: PreparedText, audio: PreparedAudio,
                  dual: torch.Tensor, k: int = 64, tile_pairs: int = 16384, precision: Precision = "auto",
                  progress: bool | None = None, both_directions: bool = True,
                  fusion: float = 0.0) -> tuple[torch.Tensor, RerankInfo]:
    """Full (N, M) two-stage score matrix (see the module docstring) and its cost.

    ``dual``: the dual-encoder scores (N, M). ``both_directions=False`` skips the a2t shortlist
    (text->audio search only: N x K passes). ``fusion``: see ``compose``.
    """
    scores, mask, info = rescore(model, text, audio, dual, k, tile_pairs, precision, progress, both_directions)
    return compose(scores, mask, dual.float(), fusion), info


@torch.no_grad()
def rescore(model: CoAttnModel, text: PreparedText, audio: PreparedAudio, dual: torch.Tensor, k: int = 64,
            tile_pairs: int = 16384, precision: Precision = "auto", progress: bool | None = None,
            both_directions: bool = True) -> tuple[torch.Tensor, torch.Tensor, RerankInfo]:
    """The cascade's scores on the union U of both shortlists: (scores (N, M), zero outside U; U mask; cost)."""
    if k < 1:
        raise ValueError(f"rerank_k must be >= 1, got {k}")
    dual = dual.float()
    n, m = dual.shape
    cols, mask = shortlist_mask(dual, k, both_directions)
    t2a = score_rows(model, text, audio, cols, tile_pairs=tile_pairs, precision=precision, progress=progress)
    rescored = torch.zeros(n, m, dtype=torch.float32, device=dual.device)
    rescored.scatter_(1, cols, t2a)
    extra = mask.clone()
    extra.scatter_(1, cols, False)  # a2t-only pairs
    ti, aj = extra.nonzero(as_tuple=True)
    if ti.numel():
        rescored[ti, aj] = score_pair_list(model, text, audio, ti, aj, tile_pairs=tile_pairs,
                                           precision=precision, progress=progress)
    return rescored, mask, RerankInfo(k, int(mask.sum()), n * m)
