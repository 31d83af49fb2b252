"""Several processes (DDP): gradient-carrying gathers, NT-Xent with global negatives, and the
evaluation gather that makes W processes report exactly the metrics of one.

Training (open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``): rank r holds B_r
(caption, clip) items with dual embeddings t_r, a_r. Every rank gathers all G = sum_r B_r of
them, *with* gradients (``torch.distributed.nn.functional.all_gather``: its backward sums the
gradients that every rank computed for a copy back onto the copy's owner), and scores only its
own rows:

    t2a: local captions x all G clips      targets = offset_r + arange(B_r)
    a2t: local clips    x all G captions   same targets
    loss_r = (W / G) * 1/2 * (sum_i CE_t2a(i) + sum_j CE_a2t(j))     (= the mean when B_r = G / W)

DDP averages gradients over the W ranks, so the update is the gradient of
1/(2G) * sum over all G items = the single-process loss of the combined batch, exactly (the test
``tests/test_ddp.py`` checks it); the W / G scaling keeps that true when ranks drop unreadable
clips and hold different B_r. Same-clip masking uses the gathered clip ids, so two captions of
one clip on different ranks are never each other's negatives.

Evaluation: Lightning shards eval loaders with a ``DistributedSampler`` that pads the last round
with repeats of the first items. ``gather_eval`` gathers every rank's features, keeps each clip
(and its captions) from the lowest rank that holds it, and sorts by ``clip_index``: the result is
what one process collects, so the scores and metrics are those of one process. Every rank gets
the full set (the scoring that follows runs on each rank; only rank 0 writes files).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from coattn.features import SequenceFeatures
from coattn.loss import nt_xent, same_clip_mask


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pad0(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad dim 0 to n rows with zeros (differentiable: the pad's backward slices)."""
    if x.shape[0] == n:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((n - x.shape[0], *x.shape[1:]))])


def gather_sizes(n: int, device: torch.device | str) -> list[int]:
    _, world = rank_world()
    if world == 1:
        return [n]
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [int(o) for o in out]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate ``x`` (n_r, ...) of every rank in rank order, gradients flowing back to each
    rank's own ``x``. Ranks may hold different n_r (padded for the collective, then trimmed)."""
    _, world = rank_world()
    if world == 1:
        return x, [x.shape[0]]
    from torch.distributed.nn.functional import all_gather

    sizes = gather_sizes(x.shape[0], x.device)
    parts = all_gather(_pad0(x, max(sizes)))
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n_r, ...) of every rank in rank order, no gradient (ids, masks)."""
    _, world = rank_world()
    if world == 1:
        return x
    sizes = gather_sizes(x.shape[0], x.device)
    src = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool collectives
    parts = [torch.empty_like(_pad0(src, max(sizes))) for _ in range(len(sizes))]
    dist.all_gather(parts, _pad0(src, max(sizes)))
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out.bool() if x.dtype == torch.bool else out


def global_nt_xent(text: torch.Tensor, audio: torch.Tensor, scale: torch.Tensor, caption_clip: torch.Tensor,
                   clip_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric NT-Xent of the dual branch with the negatives of every rank (module docstring).

    Args:
        text, audio: (B_r, E) L2-normalised embeddings of this rank's items (item b = caption b, clip b).
        scale: 1 / tau. caption_clip, clip_ids: (B_r,) clip id of each caption / clip.
    One process: exactly ``nt_xent(text @ audio.T * scale, caption_clip, clip_ids)``.
    """
    rank, world = rank_world()
    if world == 1:
        return nt_xent((text @ audio.t()) * scale, caption_clip, clip_ids)
    all_audio, sizes = gather_with_grad(audio)
    all_text, _ = gather_with_grad(text)
    all_clip, all_caption_clip = gather_no_grad(clip_ids), gather_no_grad(caption_clip)
    total = sum(sizes)
    targets = sum(sizes[:rank]) + torch.arange(text.shape[0], device=text.device)
    t2a = ((text @ all_audio.t()) * scale).float()
    a2t = ((audio @ all_text.t()) * scale).float()
    t2a = t2a.masked_fill(same_clip_mask(caption_clip, all_clip, targets), float("-inf"))
    a2t = a2t.masked_fill(same_clip_mask(clip_ids, all_caption_clip, targets), float("-inf"))
    ce = F.cross_entropy(t2a, targets, reduction="sum") + F.cross_entropy(a2t, targets, reduction="sum")
    return 0.5 * ce * (world / total)


def gather_pair_audio(states: torch.Tensor, mask: torch.Tensor, clip_ids: torch.Tensor):
    """Every rank's prepared audio for ``pair_negatives: global``: (states, mask), clip ids and
    this rank's target columns. States carry gradients back to their rank."""
    rank, _ = rank_world()
    all_states, sizes = gather_with_grad(states)
    targets = sum(sizes[:rank]) + torch.arange(states.shape[0], device=states.device)
    return (all_states, gather_no_grad(mask)), gather_no_grad(clip_ids), targets


def global_batch_size(n: int, device: torch.device | str) -> int:
    return sum(gather_sizes(n, device))


# ---- evaluation ------------------------------------------------------------------------------
def _gather_features(f: SequenceFeatures) -> SequenceFeatures:
    """Concatenate features of every rank; sequences right-padded to the longest of all ranks."""
    length = max(gather_sizes(f.states.shape[1], f.states.device))
    pad = length - f.states.shape[1]
    states = F.pad(f.states, (0, 0, 0, pad))
    mask = F.pad(f.mask, (0, pad), value=False)
    return SequenceFeatures(gather_no_grad(states), gather_no_grad(mask), gather_no_grad(f.pooled))


def _gather_list(items: list) -> list[list]:
    _, world = rank_world()
    out: list = [None] * world
    dist.all_gather_object(out, items)
    return out


def gather_eval(e: dict[str, list]) -> dict[str, list]:
    """Union over ranks of what ``_eval_step`` collected, without the sampler's repeats, in clip
    order: the lists one process would hold. One process: ``e`` unchanged.

    ``e``: audio / text (lists of SequenceFeatures), clip_index / caption_clip (lists of
    LongTensor), fnames / captions (lists of str). Each rank must hold a clip at most once
    (true of DistributedSampler and of any non-padding sharding).
    """
    rank, world = rank_world()
    if world == 1:
        return e
    audio, text = SequenceFeatures.cat(e["audio"]), SequenceFeatures.cat(e["text"])
    clip_index, caption_clip = torch.cat(e["clip_index"]), torch.cat(e["caption_clip"])
    dev = clip_index.device
    clip_rank = gather_no_grad(torch.full_like(clip_index, rank))
    cap_rank = gather_no_grad(torch.full_like(caption_clip, rank))
    clip_index, caption_clip = gather_no_grad(clip_index), gather_no_grad(caption_clip)
    audio, text = _gather_features(audio), _gather_features(text)
    fnames = [f for part in _gather_list(list(e["fnames"])) for f in part]
    captions = [c for part in _gather_list(list(e["captions"])) for c in part]
    # owner[k] = lowest rank holding clip k: its copy (and its copy's captions) is kept
    owner = torch.full((int(clip_index.max()) + 1,), world, dtype=torch.long, device=dev)
    owner.scatter_reduce_(0, clip_index, clip_rank, reduce="amin")
    keep_clip = (owner[clip_index] == clip_rank).nonzero().squeeze(1)
    keep_clip = keep_clip[torch.argsort(clip_index[keep_clip], stable=True)]
    keep_cap = (owner[caption_clip] == cap_rank).nonzero().squeeze(1)
    keep_cap = keep_cap[torch.argsort(caption_clip[keep_cap], stable=True)]  # clip order, loader order within
    kc, kt = keep_clip.tolist(), keep_cap.tolist()
    return {"audio": [audio.index(keep_clip)], "text": [text.index(keep_cap)],
            "clip_index": [clip_index[keep_clip]], "caption_clip": [caption_clip[keep_cap]],
            "fnames": [fnames[i] for i in kc], "captions": [captions[i] for i in kt]}
