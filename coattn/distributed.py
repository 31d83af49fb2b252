"""Several processes (DDP): gradient-carrying gathers (for the loss with global negatives,
``coattn.loss.global_nt_xent``) and the evaluation gather that makes W processes report exactly
the metrics of one.

``gather_with_grad`` concatenates every rank's tensor with ``torch.distributed.nn.functional.
all_gather``, whose backward sums the gradients every rank computed for a copy back onto the
copy's owner; ranks may hold different sizes (padded for the collective, then trimmed).

Evaluation: Lightning shards eval loaders with a ``DistributedSampler`` that pads the last round
with repeats of the first items. ``gather_eval`` gathers every rank's features, keeps each clip
(and its captions) from the lowest rank that holds it, and sorts by ``clip_index``: the result is
what one process collects, so the scores and metrics are those of one process. Every rank gets
the full set; exact scoring is then sharded (``Retriever(..., sharded=True)``: each rank scores a
slice of the captions, ``tiling.shard_rows``, and ``gather_no_grad`` joins the slices), so every
rank holds the whole matrix; only rank 0 writes files.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from coattn.features import PreparedAudio, SequenceFeatures


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


def gather_pair_audio(audio: PreparedAudio, clip_ids: torch.Tensor) -> tuple[PreparedAudio, torch.Tensor, torch.Tensor]:
    """Every rank's prepared audio for ``pair_negatives: global``: the audio, its clip ids and this
    rank's target columns. States carry gradients back to their rank."""
    rank, _ = rank_world()
    all_states, sizes = gather_with_grad(audio.states)
    targets = sum(sizes[:rank]) + torch.arange(audio.states.shape[0], device=audio.states.device)
    return PreparedAudio(all_states, gather_no_grad(audio.mask)), gather_no_grad(clip_ids), targets


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
