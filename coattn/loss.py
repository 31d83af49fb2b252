"""The training objective: symmetric NT-Xent (InfoNCE), its temperature, its DDP form, and the
combined loss of the pair and dual branches (``RetrievalLoss``).

For logits z (N captions x M clips, z_ij = s_ij / tau) and positives pos_ij (caption i describes
clip j), with same-clip off-target pairs excluded from the negatives:

    L_t2a = -1/N sum_i log( exp z_i,c(i) / sum_{j in neg(i) + c(i)} exp z_ij )
    L_a2t = -1/M sum_j log( exp z_r(j),j / sum_{i in neg(j) + r(j)} exp z_ij )
    L     = (L_t2a + L_a2t) / 2

In a training batch item b holds (caption b, clip b), so the target of row b is column b. Two
items can show the same clip (Clotho has 5 captions per clip): caption b then also matches
column b', which must be neither its target nor one of its negatives, so it is masked out.
Computed in float32 whatever the autocast dtype: bf16 logits lose the small differences that
matter at tau = 0.07.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from coattn.distributed import gather_no_grad, gather_pair_audio, gather_with_grad, rank_world
from coattn.errors import ConfigError
from coattn.features import SequenceFeatures
from coattn.negatives import caption_variants, mine, order_items, rotate_frames
from coattn.time_binding import SceneEvents, residual_scores


class Temperature(nn.Module):
    """tau, fixed or learned as log(1/tau) (CLIP's parameterisation), clamped to [min_tau, 1].

    The clamp (CLIP: logit scale <= 100, i.e. tau >= 0.01) stops the scale from running away
    and the loss from going NaN in long runs.
    """

    def __init__(self, init: float = 0.07, learn: bool = True, min_tau: float = 0.01):
        super().__init__()
        if not 0 < init <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {init}")
        self.min_tau = min_tau
        log_scale = torch.tensor(math.log(1.0 / init))
        if learn:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, math.log(1.0 / self.min_tau)).exp()

    @property
    def tau(self) -> float:
        return float(1.0 / self.scale.detach())


def same_clip_mask(row_clip: torch.Tensor, col_clip: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, M) True where caption i and clip j share a clip but j is not i's target column."""
    mask = row_clip[:, None] == col_clip[None, :]
    mask[torch.arange(len(targets), device=targets.device), targets] = False
    return mask


def nt_xent(logits: torch.Tensor, row_clip: torch.Tensor, col_clip: torch.Tensor,
            targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric NT-Xent; rows are captions, columns clips.

    Args:
        logits: (N, M) similarity / tau.
        row_clip: (N,) clip id of each caption; col_clip: (M,) clip id of each column.
        targets: (N,) target column of each caption; defaults to the diagonal (N == M). The
            column-wise term uses the columns that are someone's target (every column when
            N == M; a subset when the columns were gathered from other ranks).
    """
    logits = logits.float()
    n = logits.shape[0]
    if targets is None:
        targets = torch.arange(n, device=logits.device)
    masked = logits.masked_fill(same_clip_mask(row_clip, col_clip, targets), float("-inf"))
    loss_t2a = F.cross_entropy(masked, targets)
    # Column view: for target column targets[i], its positive row is i; other captions of the
    # same clip are masked the same way (the mask is symmetric in clip identity).
    cols = masked[:, targets].t()  # (N, N): row k = column targets[k] against every caption
    loss_a2t = F.cross_entropy(cols, torch.arange(n, device=logits.device))
    return 0.5 * (loss_t2a + loss_a2t)


def fp32_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float32 even under autocast (bf16-mixed training): the logits the loss reads."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float().t()


# ---------------------------------------------------------------------------------------------- DDP
def global_nt_xent(text: torch.Tensor, audio: torch.Tensor, scale: torch.Tensor, caption_clip: torch.Tensor,
                   clip_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric NT-Xent of dual embeddings with the negatives of every rank (open_clip's
    ``ClipLoss(local_loss=True, gather_with_grad=True)``).

    Rank r holds B_r (caption, clip) items; it gathers all G = sum_r B_r embeddings *with*
    gradients (``coattn.distributed.gather_with_grad``: the backward sums every rank's gradient for
    a copy onto its owner) and scores only its own rows:

        t2a: local captions x all G clips      targets = offset_r + arange(B_r)
        a2t: local clips    x all G captions   same targets
        loss_r = (W / G) * 1/2 * (sum_i CE_t2a(i) + sum_j CE_a2t(j))     (= the mean when B_r = G / W)

    DDP averages gradients over the W ranks, so the update is the gradient of the single-process
    loss of the combined batch, exactly (tests/test_ddp.py); the W / G scaling keeps that true when
    ranks drop unreadable clips and hold different B_r. Same-clip masking uses the gathered clip
    ids. One process: exactly ``nt_xent(text @ audio.T * scale, caption_clip, clip_ids)``.

    Args:
        text, audio: (B_r, E) L2-normalised embeddings of this rank's items (item b = caption b, clip b).
        scale: 1 / tau. caption_clip, clip_ids: (B_r,) clip id of each caption / clip.
    """
    rank, world = rank_world()
    if world == 1:
        return nt_xent(fp32_similarity(text, audio) * scale, caption_clip, clip_ids)
    all_audio, sizes = gather_with_grad(audio)
    all_text, _ = gather_with_grad(text)
    all_clip, all_caption_clip = gather_no_grad(clip_ids), gather_no_grad(caption_clip)
    total = sum(sizes)
    targets = sum(sizes[:rank]) + torch.arange(text.shape[0], device=text.device)
    t2a = fp32_similarity(text, all_audio) * scale
    a2t = fp32_similarity(audio, all_text) * scale
    t2a = t2a.masked_fill(same_clip_mask(caption_clip, all_clip, targets), float("-inf"))
    a2t = a2t.masked_fill(same_clip_mask(clip_ids, all_caption_clip, targets), float("-inf"))
    ce = F.cross_entropy(t2a, targets, reduction="sum") + F.cross_entropy(a2t, targets, reduction="sum")
    return 0.5 * ce * (world / total)


# ---------------------------------------------------------------------------------------------- the objective
@dataclass
class RetrievalLoss:
    """The training objective of a batch whose item b is (caption b, clip b).

        loss = L_pair + aux_weight * L(s_dual)        (cascade ``none``: loss = L(s_dual))

    L is the symmetric NT-Xent above; the dual term always uses every rank's negatives
    (``global_nt_xent``). The pair term's negatives (``coattn.negatives``):

        local     every caption of this rank against this rank's clips: B x B cascade passes
        global    against every rank's clips: B x G passes (more negatives, W times the cost)
        hard      each caption against its clip, its ``pair_k`` hardest clips by dual score and
                  ``pair_random`` random ones (over every rank's clips), each clip against its
                  caption and its ``pair_k`` hardest + ``pair_random`` random captions:
                  O(B (1 + K + R)) passes, so B can grow far beyond what B x B allows
        + time_negatives      a caption that states an order also ranks its own clip with its
                              frames rotated in time (one more column of its softmax)
        + caption_negatives   a clip also ranks its caption rewritten with the events reversed or a
                              count changed (more rows of its softmax)
        + swap_negatives      a caption that states an order also ranks its own clip with its event
                              segments reversed at the event boundaries (needs event timings)
        + count_negatives     (with caption_negatives) the count variant may add a count to an event
                              heard once, from the timings: "a cuckoo" -> "a cuckoo twice"
        residual_lambda > 0   every pair logit is (s_pair + lambda_r * sg(s_dual)) / tau: the cascade
                              learns what the dual misses (``local`` or ``hard``)
        + grounding_weight * L_ground   the positive pairs' cross-attention taught event timings
        + count_weight * L_count        the model's count head taught onsets, event frames and claimed
                                        counts from the timings (coattn/counting.py)
    (coattn/time_binding.py, docs/time.md)

    Args:
        aux_weight: weight of the dual-encoder term (ignored for cascade ``none``, whose only loss it
            is). It trains the shortlist that two-stage retrieval re-ranks.
        pair_negatives: ``local``, ``global`` or ``hard`` (see above).
        pair_k: hard negatives per caption and per clip (``hard``).
        pair_random: random negatives added to the hard ones (``hard``; hard ones alone collapse).
        time_negatives: add the time-rotated clip negatives (needs a cascade that sees time:
            ``cascade.positions``).
        caption_negatives: add the rewritten-caption negatives.
        swap_negatives: add the event-swapped clip negatives (``SceneEvents`` needed; else no effect).
        count_negatives: with ``caption_negatives`` and event timings, half of the count variants give an
            event heard once a count ("a cuckoo" -> "a cuckoo twice", ``coattn.captions.add_count``).
        residual_lambda: lambda_r of the residual pair logits (0: off); evaluation fuses with it too.
        grounding_weight: weight of the attention grounding term (0: off; needs ``SceneEvents``).
        count_weight: weight of the count head's supervised term (0: off; needs ``SceneEvents`` and a model
            with ``count_head``): the sum of its onset, membership, claimed-count and event-word terms, plus
            ``count_found_weight`` times its found-count term.
        count_found_weight: weight, inside the count term, of the found-count term: the occurrences the score
            counts (n_i) against the true count, where the per-frame terms teach each part alone (0: off).
        count_rewrite_weight: weight, inside the count term, of the onset, membership, event-word and found-count
            terms (each weight 1) on each caption's count rewrite against its own clip: the true occurrences under
            a caption that claims another count, so the found count is taught not to follow the claim
            (``coattn.counting.rewrite_count_loss``; 0: off).
        seed: of the random negatives and rotations (drawn afresh each step).
    """

    aux_weight: float = 0.5
    pair_negatives: Literal["local", "global", "hard"] = "local"
    pair_k: int = 8
    pair_random: int = 8
    time_negatives: bool = False
    caption_negatives: bool = False
    swap_negatives: bool = False
    count_negatives: bool = False
    residual_lambda: float = 0.0
    grounding_weight: float = 0.0
    count_weight: float = 0.0
    count_found_weight: float = 0.0
    count_rewrite_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pair_negatives not in ("local", "global", "hard"):
            raise ConfigError(f"model.loss.pair_negatives must be 'local', 'global' or 'hard', "
                              f"got {self.pair_negatives!r}")
        if self.pair_k < 0 or self.pair_random < 0 or self.pair_k + self.pair_random < 1:
            raise ConfigError(f"model.loss.pair_k and pair_random must be >= 0 with at least one negative, got "
                              f"{self.pair_k}, {self.pair_random}")
        if self.aux_weight < 0:
            raise ConfigError(f"model.loss.aux_weight must be >= 0, got {self.aux_weight}")
        if not (self.residual_lambda >= 0 and math.isfinite(self.residual_lambda)) or self.grounding_weight < 0:
            raise ConfigError(f"model.loss.residual_lambda and grounding_weight must be >= 0, got "
                              f"{self.residual_lambda}, {self.grounding_weight}")
        if not (self.count_weight >= 0 and math.isfinite(self.count_weight)):
            raise ConfigError(f"model.loss.count_weight must be >= 0, got {self.count_weight}")
        for key in ("count_found_weight", "count_rewrite_weight"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"model.loss.{key} must be >= 0, got {value}")
            if value and not self.count_weight:
                raise ConfigError(f"model.loss.{key} weights a part of the count term: set "
                                  f"model.loss.count_weight > 0 as well (or {key}: 0)")
        if self.count_negatives and not self.caption_negatives:
            raise ConfigError("model.loss.count_negatives adds count variants to the caption negatives: set "
                              "model.loss.caption_negatives: true as well (or count_negatives: false)")
        if self.residual_lambda and self.pair_negatives == "global":
            raise ConfigError("model.loss.pair_negatives 'global' is not supported with residual scoring "
                              "(residual_lambda > 0): use 'local' or 'hard'")
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, model, audio: SequenceFeatures, text: SequenceFeatures, caption_clip: torch.Tensor,
                 clip_ids: torch.Tensor, captions: list[str] | None = None,
                 events: SceneEvents | None = None) -> dict[str, torch.Tensor]:
        """Loss terms (``loss``, ``dual_loss``, ``pair_loss``, ``grounding_loss``) of encoded items, for a
        ``CoAttnModel``. ``captions`` (the texts) are needed by ``time_negatives``, ``caption_negatives`` and
        ``grounding_weight``; ``events`` (the batch's event timings) by ``swap_negatives`` and grounding."""
        dual_t, dual_a = model.dual_embed_text(text), model.dual_embed_audio(audio)
        out = {"dual_loss": global_nt_xent(dual_t, dual_a, model.dual_temperature.scale, caption_clip, clip_ids)}
        if not model.has_pairwise:
            out["loss"] = out["dual_loss"]
            return out
        prepared_text = model.prepare_text(text)
        prepared = local = model.prepare_audio(audio)
        col_clip, targets = clip_ids, None
        if self.pair_negatives in ("global", "hard") and rank_world()[1] > 1:
            prepared, col_clip, targets = gather_pair_audio(prepared, clip_ids)
        swap = self.swap_negatives and events is not None
        if self.pair_negatives == "hard" or self.time_negatives or self.caption_negatives or swap:
            t2a, a2t = pair_logits(self, model, prepared_text, prepared, audio, dual_t, dual_a, caption_clip,
                                   clip_ids, col_clip, targets, captions, events)
            zero = torch.zeros(t2a.shape[0], dtype=torch.long, device=t2a.device)  # column 0: the positive
            out["pair_loss"] = 0.5 * (F.cross_entropy(t2a.float(), zero) + F.cross_entropy(a2t.float(), zero))
        else:
            sims = model.score_grid(prepared_text, prepared)  # (B, B) or (B, G): every pair
            sims = residual_scores(sims, fp32_similarity(dual_t, dual_a), self.residual_lambda)  # local only
            out["pair_loss"] = nt_xent(sims * model.pair_temperature.scale, caption_clip, col_clip, targets)
        out["loss"] = out["pair_loss"] + self.aux_weight * out["dual_loss"]
        grounding = bool(self.grounding_weight)
        counting = bool(self.count_weight)
        if (grounding or counting) and events is not None and captions is not None:
            from coattn.time_binding import positive_grounding, positive_labels
            labels = positive_labels(model, prepared_text, local.mask, captions, events)
            if grounding:
                out["grounding_loss"] = positive_grounding(model, prepared_text, local, labels)
                out["loss"] = out["loss"] + self.grounding_weight * out["grounding_loss"]
            if counting:
                from coattn.counting import positive_count_loss
                parts = positive_count_loss(model, prepared_text, local, events, labels)
                out["count_loss"] = sum(v * (self.count_found_weight if k == "found" else 1.0)
                                        for k, v in parts.items())
                out.update({f"count_{k}": v.detach() for k, v in parts.items()})
                if self.count_rewrite_weight:
                    from coattn.counting import rewrite_count_loss
                    seed = int(torch.randint(1 << 30, (1,), generator=self._generator))
                    rewrites = rewrite_count_loss(model, captions, local, events, seed)
                    if rewrites is not None:
                        term = sum(rewrites.values())
                        out["count_loss"] = out["count_loss"] + self.count_rewrite_weight * term
                        out["count_rewrite"] = term.detach()
                out["loss"] = out["loss"] + self.count_weight * out["count_loss"]
        return out


def _all_columns(scores: torch.Tensor, invalid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, 1 + G) logits: the target first, then every column (the target's own slot and invalid ones -inf)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    banned = invalid.clone()
    banned[rows, targets] = True
    return torch.cat([scores[rows, targets][:, None], scores.masked_fill(banned, float("-inf"))], 1)


def pair_logits(cfg: RetrievalLoss, model, text_p, audio_p, audio: SequenceFeatures, dual_t: torch.Tensor,
                dual_a: torch.Tensor,
                caption_clip: torch.Tensor, clip_ids: torch.Tensor, col_clip: torch.Tensor,
                targets: torch.Tensor | None, captions: list[str] | None,
                events: SceneEvents | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair term's scaled logits, positive in column 0 and impossible entries -inf: t2a (B, C) rows
    are captions over clips, a2t (B, C') rows are this rank's clips over captions (``RetrievalLoss``)."""
    b, dev = len(caption_clip), dual_t.device
    rows = torch.arange(b, device=dev)
    targets = rows if targets is None else targets
    scale = model.pair_temperature.scale
    gen, lam = cfg._generator, cfg.residual_lambda
    own_dual = (dual_t * dual_a).sum(-1) if lam else None  # s_dual(b, b): a reordered clip keeps its pooled vector
    invalid = same_clip_mask(caption_clip, col_clip, targets)  # (B, G): other captions of the same clip
    if cfg.pair_negatives == "hard":
        with torch.no_grad():
            dual_grid = dual_t @ gather_no_grad(dual_a).t()  # (B, G): mines the negatives, and s_dual of residual
            cols, valid = mine(dual_grid, invalid, targets, cfg.pair_k, cfg.pair_random, gen)
        uniq, inv = torch.unique(cols, return_inverse=True)
        t2a = model.score_block(text_p, rows, model.cascade.clip_stage(audio_p, uniq), inv)
        t2a = residual_scores(t2a, dual_grid.gather(1, cols) if lam else None, lam)
        t2a = t2a.masked_fill(~valid, float("-inf")) * scale
        with torch.no_grad():  # each clip's captions: its own first, then hard and random ones
            inv_t = same_clip_mask(clip_ids, caption_clip, rows)
            caps, valid_t = mine(dual_a @ dual_t.t(), inv_t, rows, cfg.pair_k, cfg.pair_random, gen)
        a2t = model.score_pairs(text_p, caps.reshape(-1), audio_p, targets.repeat_interleave(caps.shape[1]))
        # clip j (this rank's) against caption caps[j, k]: s_dual = dual_t[caps[j, k]] . dual_a[j]
        dual_caps = (dual_t[caps] * dual_a[:, None, :]).sum(-1) if lam else None
        a2t = residual_scores(a2t.view(caps.shape), dual_caps, lam).masked_fill(~valid_t, float("-inf")) * scale
    else:  # local / global: every pair once; the clip view reads the same grid
        grid = residual_scores(model.score_grid(text_p, audio_p), fp32_similarity(dual_t, dual_a), lam) * scale
        t2a = _all_columns(grid, invalid, targets)
        a2t = _all_columns(grid[:, targets].t(), same_clip_mask(clip_ids, caption_clip, rows), rows)
    extra_t2a, extra_a2t = [], []
    if cfg.time_negatives and captions is not None:  # caption b against its own clip, rotated in time
        rotated = model.prepare_audio(rotate_frames(audio, gen))
        s = residual_scores(model.score_pairs(text_p, rows, rotated, rows), own_dual, lam) * scale
        extra_t2a.append(s.masked_fill(~order_items(captions).to(dev), float("-inf"))[:, None])
    if cfg.swap_negatives and events is not None and captions is not None:  # its own clip, events reversed
        from coattn.time_binding import event_cuts, swap_segments

        cuts = event_cuts(events.times, audio.mask.sum(1), audio.mask.shape[1])
        swapped, _ = swap_segments(audio, cuts)
        s = residual_scores(model.score_pairs(text_p, rows, model.prepare_audio(swapped), rows), own_dual, lam) * scale
        usable = order_items(captions).to(dev) & torch.tensor([bool(c) for c in cuts], device=dev)
        extra_t2a.append(s.masked_fill(~usable, float("-inf"))[:, None])
    if cfg.caption_negatives and captions is not None:  # clip b against its caption rewritten
        texts, owners = caption_variants(captions, int(torch.randint(1 << 30, (1,), generator=gen)),
                                         events if cfg.count_negatives else None)
        if texts:
            owner = torch.tensor(owners, device=dev)
            feats = model.encode_text(texts)
            s = model.score_pairs(model.prepare_text(feats), torch.arange(len(texts), device=dev), audio_p,
                                  targets[owner])
            if lam:  # the rewritten caption's own dual score against the clip
                s = residual_scores(s, (model.dual_embed_text(feats) * dual_a[owner]).sum(-1), lam)
            s = s * scale
            # position of each variant among its owner's (owners ascend): index minus the owner's first index
            slot = torch.arange(len(owners), device=dev) - torch.searchsorted(owner, owner)
            table = torch.full((b, int(slot.max()) + 1), float("-inf"), device=dev, dtype=s.dtype)
            table[owner, slot] = s
            extra_a2t.append(table)
    return torch.cat([t2a, *extra_t2a], 1), torch.cat([a2t, *extra_a2t], 1)
