"""Symmetric NT-Xent (InfoNCE) over a caption x clip logit matrix, and its temperature.

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

import torch
import torch.nn.functional as F
from torch import nn


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
