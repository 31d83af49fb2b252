"""Retrieval metrics for language-based audio retrieval (DCASE task 6b conventions).

We own these instead of using torchmetrics' retrieval metrics: those drop relevant items
scored <= 0 (wrong for cosine scores) and `RetrievalMAP(top_k)` divides by the hits found.

Inputs everywhere: `scores` (N captions, M clips), higher = more similar, on any device and
dtype; `caption_clip` (N,) the index of each caption's single relevant clip.

Tie rule (deterministic, so ranks never depend on the hardware's sort):
    a stable descending sort: among equal scores the clip (or caption) with the LOWER
    index ranks first. The rank of the true item is therefore
        rank = 1 + #(s > s_true) + #(s == s_true and idx < true_idx),
    computed by an O(NM) comparison (no sort). Every top-k list (`topk`, the submission
    file) uses `torch.sort(..., descending=True, stable=True)`, which orders the same way,
    so ranks and lists agree. NaN scores raise ValueError (a NaN has no place in an order).

Definitions (ranks are 1-based):
    text -> audio, one query per caption, one relevant clip:
        R@k       = 1[rank <= k]
        AP@10     = 1/rank if rank <= 10 else 0        (DCASE mAP@10 with one relevant clip)
        medR      = median rank (midpoint of the two middle values for an even count)
        meanR     = mean rank
    audio -> text, one query per clip, its c captions are relevant, ranked among all N
    captions by that clip's column of `scores`:
        R@k       = 1[any of its captions at rank <= k]
        AP@10     = (1/c) * sum over its captions at rank r <= 10 of P@r,
                    P@r = (#its captions at ranks <= r) / r      (divided by c, not by hits)
        medR      = median over clips of the best-ranked caption's rank
    Clips without captions are no a2t query and are left out of a2t metrics.
    Metrics are reported as fractions in [0, 1]; medR / meanR as ranks.

Blocks of queries are processed at a time only to bound memory (2**24 compared elements per
block); within a block everything is vectorised.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import torch
from torch import Tensor

TIE_RULE = (
    "stable descending sort: among equal scores the lower clip/caption index ranks first; "
    "rank = 1 + #(s > s_true) + #(s == s_true and idx < true_idx)"
)
MAP_CUTOFF = 10
# Pad value of `audio_to_text_ranks` for clips with fewer captions than the most-captioned
# one: larger than any real rank, so it never counts as a hit.
A2T_PAD = torch.iinfo(torch.long).max
_BLOCK = 2**24  # elements per comparison block (~16 M bools + a float block)


# ---------------------------------------------------------------------------- validation
def _prepare(scores: Tensor, caption_clip: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and NaNs; upcast losslessly (fp16/bf16 -> fp32) so ties survive."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N captions, M clips), got shape {tuple(scores.shape)}")
    n, m = scores.shape
    caption_clip = torch.as_tensor(caption_clip).to(device=scores.device, dtype=torch.long)
    if caption_clip.shape != (n,):
        raise ValueError(f"caption_clip must have shape ({n},), got {tuple(caption_clip.shape)}")
    if n and (caption_clip.min() < 0 or caption_clip.max() >= m):
        raise ValueError(f"caption_clip values must lie in [0, {m})")
    if scores.dtype == torch.float64:
        pass
    elif scores.is_floating_point():
        scores = scores.float()  # exact for fp16 / bf16
    else:
        scores = scores.double()  # integer / bool scores: exact up to 2**53
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; ranks would be undefined")
    return scores, caption_clip


# ---------------------------------------------------------------------------- ranks
def _ranks_t2a(scores: Tensor, caption_clip: Tensor) -> Tensor:
    n, m = scores.shape
    clip_idx = torch.arange(m, device=scores.device)
    out = torch.empty(n, dtype=torch.long, device=scores.device)
    step = max(1, _BLOCK // max(m, 1))
    for a in range(0, n, step):  # blocks of captions, only to bound memory
        s = scores[a : a + step]
        true = caption_clip[a : a + step]
        s_true = s.gather(1, true[:, None])  # (B, 1)
        ahead = (s > s_true) | ((s == s_true) & (clip_idx[None, :] < true[:, None]))
        out[a : a + step] = 1 + ahead.sum(1)
    return out


def text_to_audio_ranks(scores: Tensor, caption_clip: Tensor) -> Tensor:
    """1-based rank of each caption's relevant clip among all M clips: LongTensor (N,) on CPU."""
    scores, caption_clip = _prepare(scores, caption_clip)
    return _ranks_t2a(scores, caption_clip).cpu()


def _caption_ranks_a2t(scores: Tensor, caption_clip: Tensor) -> Tensor:
    n = scores.shape[0]
    cap_idx = torch.arange(n, device=scores.device)
    out = torch.empty(n, dtype=torch.long, device=scores.device)
    step = max(1, _BLOCK // max(n, 1))
    for a in range(0, n, step):  # blocks of captions, only to bound memory
        cols = scores[:, caption_clip[a : a + step]].T  # (B, N): the column of each caption's clip
        own = cap_idx[a : a + step]
        s_self = cols.gather(1, own[:, None])  # (B, 1): the caption's own score
        ahead = (cols > s_self) | ((cols == s_self) & (cap_idx[None, :] < own[:, None]))
        out[a : a + step] = 1 + ahead.sum(1)
    return out


def audio_to_text_caption_ranks(scores: Tensor, caption_clip: Tensor) -> Tensor:
    """Rank of caption i among all N captions in the column of its own clip: LongTensor (N,)."""
    scores, caption_clip = _prepare(scores, caption_clip)
    return _caption_ranks_a2t(scores, caption_clip).cpu()


def _pad_by_clip(ranks: Tensor, caption_clip: Tensor, m: int) -> Tensor:
    """(N,) caption ranks -> (M, max_c) per-clip ranks sorted ascending, padded with A2T_PAD."""
    ranks, caption_clip = ranks.cpu(), caption_clip.cpu()
    n = ranks.numel()
    counts = torch.bincount(caption_clip, minlength=m)
    width = int(counts.max()) if n else 0
    out = torch.full((m, width), A2T_PAD, dtype=torch.long)
    if n == 0:
        return out
    # Sort by (clip, rank) in one key; ranks within a column are distinct, so no ties.
    order = torch.argsort(caption_clip * (n + 1) + ranks)
    clip_sorted = caption_clip[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n) - starts[clip_sorted]
    out[clip_sorted, slot] = ranks[order]
    return out


def audio_to_text_ranks(scores: Tensor, caption_clip: Tensor) -> Tensor:
    """Ranks of each clip's captions among all N captions for that clip: LongTensor (M, max_c).

    Row j holds clip j's caption ranks in ascending order, padded with `A2T_PAD`.
    """
    scores, caption_clip = _prepare(scores, caption_clip)
    ranks = _caption_ranks_a2t(scores, caption_clip)
    return _pad_by_clip(ranks, caption_clip, scores.shape[1])


def topk(scores: Tensor, k: int = 10, dim: int = 1) -> Tensor:
    """Indices of the k best items per row (dim=1: clips per caption) in rank order, on the
    scores' device. Every top-k of coattn (shortlists, search, submission files, examples) is this.

    Uses the same tie rule as the ranks (stable descending sort), so
    `topk(scores)[i].tolist().index(caption_clip[i]) + 1 == text_to_audio_ranks(...)[i]`.
    """
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; ranks would be undefined")
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
    return order.narrow(dim, 0, min(k, scores.shape[dim]))


# ---------------------------------------------------------------------------- per-query metrics
def _median(x: Tensor, dim: int = -1) -> Tensor:
    """Median with the midpoint rule for even counts (numpy's convention, unlike torch.median)."""
    s = x.sort(dim=dim).values
    n = s.shape[dim]
    lo = s.narrow(dim, (n - 1) // 2, 1)
    hi = s.narrow(dim, n // 2, 1)
    return ((lo + hi) / 2).squeeze(dim)


def per_query_metrics(
    scores: Tensor, caption_clip: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Tensor]:
    """Per-query metric vectors (float64, CPU), the input of `aggregate` and `bootstrap_ci`.

    t2a_* have one entry per caption (N,); a2t_* one per clip with >= 1 caption.
    `*_medR` / `*_meanR` hold ranks (aggregated by median / mean), the rest per-query values.
    """
    scores, caption_clip = _prepare(scores, caption_clip)
    m = scores.shape[1]
    out: dict[str, Tensor] = {}

    r = _ranks_t2a(scores, caption_clip).cpu().double()
    out[f"t2a_mAP@{MAP_CUTOFF}"] = torch.where(r <= MAP_CUTOFF, 1.0 / r, torch.zeros_like(r))
    for k in ks:
        out[f"t2a_R@{k}"] = (r <= k).double()
    out["t2a_medR"] = r
    out["t2a_meanR"] = r

    cap_clip_cpu = caption_clip.cpu()
    padded = _pad_by_clip(_caption_ranks_a2t(scores, caption_clip), cap_clip_cpu, m)
    counts = torch.bincount(cap_clip_cpu, minlength=m)
    has = counts > 0  # clips without captions are no a2t query
    padded, counts = padded[has], counts[has].double()
    pr = padded.double()  # A2T_PAD -> ~9.2e18, still > any cutoff
    # The j-th best caption (1-based) at rank r has exactly j relevant items in the top r,
    # so it contributes P@r = j / r.
    j = torch.arange(1, padded.shape[1] + 1, dtype=torch.float64)
    hit = pr <= MAP_CUTOFF
    out[f"a2t_mAP@{MAP_CUTOFF}"] = torch.where(hit, j / pr, torch.zeros_like(pr)).sum(1) / counts
    best = pr[:, 0] if pr.shape[1] else pr.new_empty(0)
    for k in ks:
        out[f"a2t_R@{k}"] = (best <= k).double()
    out["a2t_medR"] = best
    return out


def _aggregate_key(key: str, x: Tensor, dim: int = -1) -> Tensor:
    if x.shape[dim] == 0:  # e.g. no clip has a caption: the metric is undefined
        shape = list(x.shape)
        del shape[dim]
        return torch.full(shape, math.nan, dtype=torch.float64)
    return _median(x, dim) if key.endswith("medR") else x.mean(dim)


def aggregate(per_query: Mapping[str, Tensor]) -> dict[str, float]:
    """Per-query vectors -> corpus metrics: median for `*medR`, mean for everything else."""
    return {k: float(_aggregate_key(k, v.double().cpu())) for k, v in per_query.items()}


def retrieval_metrics(
    scores: Tensor, caption_clip: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Corpus metrics; with the default ks the keys are exactly
    t2a_mAP@10, t2a_R@1, t2a_R@5, t2a_R@10, t2a_medR, t2a_meanR,
    a2t_mAP@10, a2t_R@1, a2t_R@5, a2t_R@10, a2t_medR."""
    return aggregate(per_query_metrics(scores, caption_clip, ks))


# ---------------------------------------------------------------------------- chance levels
def _median_of_pmf(pmf: Sequence[float]) -> float:
    """Median of a distribution on ranks 1..len(pmf); midpoint when the CDF hits 0.5 exactly
    (matches the sample-median convention in the large-sample limit, e.g. (M+1)/2 for uniform)."""
    cdf = 0.0
    for i, p in enumerate(pmf, start=1):
        cdf += p
        if abs(cdf - 0.5) < 1e-12:
            return i + 0.5
        if cdf > 0.5:
            return float(i)
    return float(len(pmf))


def _a2t_best_rank_cdf(n: int, c: int, k: int) -> float:
    """P(best of c relevant captions among n at rank <= k) = 1 - C(n-c, k) / C(n, k).

    C(n-c, k) / C(n, k) = prod_{i<c} (n-k-i) / (n-i): O(c) floats instead of huge binomials;
    a factor <= 0 means k > n - c, where a hit is certain.
    """
    miss = 1.0
    for i in range(c):
        if n - k - i <= 0:
            return 1.0
        miss *= (n - k - i) / (n - i)
    return 1.0 - miss


def _a2t_expected_ap(n: int, c: int, cutoff: int = MAP_CUTOFF) -> float:
    """E[AP@cutoff] for c relevant among n under a uniformly random permutation.

    By linearity, E[AP] = (1/c) * sum_r E[1[rel at r] * K_r] / r with K_r = #relevant in the
    top r. P(rel at r) = c/n and, given that, the other r-1 slots hold (c-1)/(n-1) relevant
    each on average: E[K_r | rel at r] = 1 + (r-1)(c-1)/(n-1). Hence
        E[AP] = (1/n) * sum_{r=1}^{min(cutoff, n)} (1/r) * (1 + (r-1)(c-1)/(n-1)).
    With c = 1 this is the t2a formula (1/n) * sum 1/r.
    """
    total = 0.0
    for r in range(1, min(cutoff, n) + 1):
        extra = (r - 1) * (c - 1) / (n - 1) if n > 1 else 0.0
        total += (1.0 + extra) / r
    return total / n


def chance_metrics(
    caption_clip: Tensor | Sequence[int] | None = None,
    n_clips: int | None = None,
    n_captions_per_clip: int | Sequence[int] | Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Expected metrics under a uniformly random ranking (same keys as `retrieval_metrics`).

    Give `caption_clip` (captions per clip are counted from it; `n_clips` defaults to
    max + 1), or `n_clips` with `n_captions_per_clip` (an int or one count per clip).
    Closed forms (M clips, N captions, a clip with c captions):
        t2a R@k = min(k, M)/M;  t2a mAP@10 = (1/M) * sum_{r=1}^{min(10,M)} 1/r
        a2t R@k = 1 - C(N-c, k)/C(N, k);  a2t mAP@10: see `_a2t_expected_ap`
    a2t values are averaged over clips with >= 1 caption, like the metrics.
    medR / meanR: meanR is the exact expectation (M+1)/2; medR is the median of the rank
    distribution (uniform for t2a, the pooled best-caption rank for a2t), which is what the
    sample median tends to with many queries.
    """
    if caption_clip is not None:
        cc = torch.as_tensor(caption_clip, dtype=torch.long).cpu()
        m = int(n_clips) if n_clips is not None else (int(cc.max()) + 1 if cc.numel() else 0)
        counts = torch.bincount(cc, minlength=m)
    elif n_clips is not None and n_captions_per_clip is not None:
        m = int(n_clips)
        counts = torch.as_tensor(n_captions_per_clip, dtype=torch.long).cpu()
        counts = counts.expand(m).clone() if counts.dim() == 0 else counts
        if counts.numel() != m:
            raise ValueError("n_captions_per_clip must be an int or have n_clips entries")
    else:
        raise ValueError("give caption_clip, or n_clips with n_captions_per_clip")
    n = int(counts.sum())
    if m == 0 or n == 0:
        raise ValueError("need at least one clip and one caption")

    out: dict[str, float] = {}
    out[f"t2a_mAP@{MAP_CUTOFF}"] = sum(1.0 / r for r in range(1, min(MAP_CUTOFF, m) + 1)) / m
    for k in ks:
        out[f"t2a_R@{k}"] = min(k, m) / m
    out["t2a_medR"] = _median_of_pmf([1.0 / m] * m)
    out["t2a_meanR"] = (m + 1) / 2

    # Only distinct caption counts need a closed form; weight them by how many clips share them.
    cs, mult = torch.unique(counts[counts > 0], return_counts=True)
    cs, w = cs.tolist(), (mult.double() / mult.sum()).tolist()
    out[f"a2t_mAP@{MAP_CUTOFF}"] = sum(wi * _a2t_expected_ap(n, c) for c, wi in zip(cs, w))
    for k in ks:
        out[f"a2t_R@{k}"] = sum(wi * _a2t_best_rank_cdf(n, c, k) for c, wi in zip(cs, w))
    # Best-rank pmf pooled over clips: P(best = k) = F(k) - F(k-1); ranks run 1..N-c+1.
    pmf = []
    prev = 0.0
    for k in range(1, n + 1):
        cdf = sum(wi * _a2t_best_rank_cdf(n, c, k) for c, wi in zip(cs, w))
        pmf.append(cdf - prev)
        prev = cdf
        if cdf > 0.5 + 1e-9:  # the median is found; the tail does not matter
            break
    out["a2t_medR"] = _median_of_pmf(pmf)
    # Keep the documented key order.
    order = [k for k in retrieval_keys(ks) if k in out]
    return {k: out[k] for k in order}


def retrieval_keys(ks: Sequence[int] = (1, 5, 10)) -> list[str]:
    """The keys of `retrieval_metrics` / `chance_metrics`, in report order."""
    t2a = [f"t2a_mAP@{MAP_CUTOFF}", *(f"t2a_R@{k}" for k in ks), "t2a_medR", "t2a_meanR"]
    a2t = [f"a2t_mAP@{MAP_CUTOFF}", *(f"a2t_R@{k}" for k in ks), "a2t_medR"]
    return t2a + a2t


# ---------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    per_query: Mapping[str, Tensor],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs over queries: {key: (low, high)} at level 1 - alpha.

    Metrics sharing a prefix (`t2a`: queries are captions; `a2t`: queries are clips) are
    resampled with one shared (n_boot, n) index matrix, so their CIs come from the same
    resamples. Each prefix draws from its own generator seeded by (seed, prefix), so adding a
    metric never moves another's CI. Statistic per resample as in `aggregate`.
    """
    groups: dict[str, list[str]] = {}
    for key in per_query:
        groups.setdefault(key.split("_", 1)[0], []).append(key)
    out: dict[str, tuple[float, float]] = {}
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    for prefix, keys in groups.items():
        n = per_query[keys[0]].numel()
        if any(per_query[k].numel() != n for k in keys):
            raise ValueError(f"per-query vectors of prefix {prefix!r} differ in length")
        if n == 0:
            out.update({k: (math.nan, math.nan) for k in keys})
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(prefix.encode()))
        idx = torch.randint(0, n, (n_boot, n), generator=gen)
        for k in keys:
            stats = _aggregate_key(k, per_query[k].double().cpu()[idx], dim=1)  # (n_boot,)
            lo, hi = torch.quantile(stats, q).tolist()
            out[k] = (lo, hi)
    return out
