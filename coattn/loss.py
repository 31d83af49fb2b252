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
from coattn.features import SequenceFeatures


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


# ---------------------------------------------------------------------------------------------- the objective
@dataclass
class RetrievalLoss:
    """The training objective of a batch whose item b is (caption b, clip b).

        loss = L(s_pair) + aux_weight * L(s_dual)        (cascade ``none``: loss = L(s_dual))

    L is the symmetric NT-Xent above. The dual term always uses every rank's negatives
    (``global_nt_xent``); the pair term scores every caption of this rank against this rank's clips
    (``pair_negatives: local``, B x B cascade passes) or against every rank's clips (``global``,
    B x G passes: more negatives at W times the cost).

    Args:
        aux_weight: weight of the dual-encoder term (ignored for cascade ``none``, whose only loss it
            is). It trains the shortlist that two-stage retrieval re-ranks.
        pair_negatives: ``local`` or ``global`` negatives of the pair term under DDP (see above).
    """

    aux_weight: float = 0.5
    pair_negatives: Literal["local", "global"] = "local"

    def __post_init__(self) -> None:
        if self.pair_negatives not in ("local", "global"):
            raise ValueError(f"pair_negatives must be 'local' or 'global', got {self.pair_negatives!r}")

    def __call__(self, model, audio: SequenceFeatures, text: SequenceFeatures, caption_clip: torch.Tensor,
                 clip_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms (``loss``, ``dual_loss``, ``pair_loss``) of encoded items, for a ``CoAttnModel``."""
        out = {"dual_loss": global_nt_xent(model.dual_embed_text(text), model.dual_embed_audio(audio),
                                           model.dual_temperature.scale, caption_clip, clip_ids)}
        if not model.has_pairwise:
            out["loss"] = out["dual_loss"]
            return out
        prepared = model.prepare_audio(audio)
        col_clip, targets = clip_ids, None
        if self.pair_negatives == "global" and rank_world()[1] > 1:
            prepared, col_clip, targets = gather_pair_audio(prepared, clip_ids)
        sims = model.score_grid(model.prepare_text(text), prepared)  # (B, B) or (B, G): every pair
        out["pair_loss"] = nt_xent(sims * model.pair_temperature.scale, caption_clip, col_clip, targets)
        out["loss"] = out["pair_loss"] + self.aux_weight * out["dual_loss"]
        return out
