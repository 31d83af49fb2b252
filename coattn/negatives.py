"""The negatives the pair term trains on, beyond random in-batch ones.

    hard (mined)     each caption's K most similar other clips by the dual score, plus R random
                     ones; each clip's K most similar other captions, plus R random (ALBEF/BLIP's
                     image-text matching mines the same way). O(B (1 + K + R)) cascade passes
                     instead of B x B; K = B - 1, R = 0 is exactly the B x B loss.
    time (built)     a caption that states an order, against its own clip with its frames rotated
                     in time ("A then B" -> "B then A" audio): only the order differs
    captions (built) a clip against its caption rewritten: events in reverse order, one count
                     changed (``coattn.captions``): only the order or the count differs

Random in-batch negatives mostly differ in *which* events they hold, which the dual encoder
already separates; the built ones differ only in what co-attention alone can see (order, count).
"""
from __future__ import annotations

import random

import torch

from coattn.captions import add_count, carry_phrases, change_count, has_order_cue, reverse_order
from coattn.features import SequenceFeatures


def mine(similarity: torch.Tensor, invalid: torch.Tensor, targets: torch.Tensor, k: int, r: int,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns per row: its target, its ``k`` most similar valid columns, ``r`` random other valid ones.

    Args:
        similarity: (B, G) scores used for mining (the dual branch's, no gradient needed).
        invalid: (B, G) True where a column may not be a negative of the row (the same clip).
        targets: (B,) the positive column of each row.
    Returns (cols (B, 1 + k + r), valid (B, 1 + k + r)): rows with fewer valid columns than asked
    are padded with a column flagged invalid (its logit is then -inf, it adds nothing).
    """
    b, g = similarity.shape
    rows = torch.arange(b, device=similarity.device)
    banned = invalid.clone()
    banned[rows, targets] = True
    k, r = max(0, min(k, g - 1)), max(0, min(r, g - 1))
    hard_s, hard = similarity.float().masked_fill(banned, float("-inf")).topk(k, dim=1)
    taken = banned.clone()
    taken.scatter_(1, hard, True)
    noise = torch.rand(b, g, generator=generator).to(similarity.device)
    rand_s, rand = noise.masked_fill(taken, float("-inf")).topk(min(r, g), dim=1)
    cols = torch.cat([targets[:, None], hard, rand], 1)
    valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=cols.device), hard_s.isfinite(), rand_s.isfinite()], 1)
    return cols, valid


def rotate_frames(feats: SequenceFeatures, generator: torch.Generator | None = None) -> SequenceFeatures:
    """Each clip's real frames rolled in time by a random shift in [n/4, 3n/4] (n = its real frames):
    the events keep their sound, their order changes. Padded frames stay at the end."""
    states = feats.states.clone()
    n_real = feats.mask.sum(1)
    for i, n in enumerate(n_real.tolist()):
        if n >= 4:
            shift = int(torch.randint(n // 4, 3 * n // 4 + 1, (1,), generator=generator))
            states[i, :n] = torch.roll(feats.states[i, :n], shift, 0)
    return SequenceFeatures(states, feats.mask, feats.pooled)


def order_items(captions: list[str]) -> torch.Tensor:
    """(B,) bool: the captions that state an order (only those get a time-rotated negative)."""
    return torch.tensor([has_order_cue(c) for c in captions], dtype=torch.bool)


def caption_variants(captions: list[str], seed: int = 0, events=None) -> tuple[list[str], list[int]]:
    """Rewritten captions (reverse order, changed count) and the item each one belongs to. With ``events``
    (the batch's ``SceneEvents``: count negatives from timings), the count variant is, half of the time or
    when no explicit count exists, an event heard once given a count (``add_count``: "a cuckoo" -> "a cuckoo
    twice"), the variant a text rewrite cannot make."""
    rng = random.Random(seed)
    texts, owners = [], []
    for i, c in enumerate(captions):
        for variant in (reverse_order(c), _count_variant(c, i, rng, events)):
            if variant:
                texts.append(variant)
                owners.append(i)
    return texts, owners


def count_rewrites(captions: list[str], events, seed: int = 0) -> tuple[list[str], list[int], list[list]]:
    """The count variant of each caption that has one (drawn as ``caption_variants`` draws it), its item, and its phrase
    spans carried over from ``events.phrases`` (``carry_phrases``): the clip is unchanged, so each named event
    still happens as often as the timings say, whatever count the rewrite claims (``coattn.counting``)."""
    rng = random.Random(seed)
    texts, owners, phrases = [], [], []
    for i, c in enumerate(captions):
        variant = _count_variant(c, i, rng, events)
        if variant:
            texts.append(variant)
            owners.append(i)
            phrases.append(carry_phrases(c, variant, events.phrases[i] if i < len(events) else []))
    return texts, owners, phrases


def _count_variant(caption: str, i: int, rng: random.Random, events) -> str | None:
    """One count changed (``change_count``) or, with ``events``, half of the time or when the caption has no
    explicit count, a count added to an event heard once (``add_count``)."""
    count = change_count(caption, rng)
    if events is not None and i < len(events) and (count is None or rng.random() < 0.5):
        ev = [int(e) for e in events.times[i, :, 0].tolist() if e >= 0]
        count = add_count(caption, events.phrases[i], {e: ev.count(e) for e in set(ev)}, rng) or count
    return count
