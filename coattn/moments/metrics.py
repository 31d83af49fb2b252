"""Moment retrieval metrics exactly as the field computes them (Moment-DETR's standalone_eval, which
Lighthouse reuses for Clotho-Moment and CASTELLA), vectorised over queries and IoU thresholds.

Reference: jayleicn/moment_detr standalone_eval/eval.py (``compute_mr_r1``, ``compute_mr_ap``) and
standalone_eval/utils.py (``compute_average_precision_detection``, ``interpolated_precision_recall``),
itself MMAction2's ActivityNet detection AP. Windows are [start, end] in seconds.

Per query q with ground-truth windows G_q and ranked predictions (window, score):

    IoU(a, b)   = |a ∩ b| / |a ∪ b|                         (0 when the windows do not touch)
    R1@θ        = 1[ max_g IoU(top-1 prediction, g) >= θ ]   top-1 = first window as given
    AP@θ        predictions: the first ``max_pred_windows`` (10) as given, then sorted by descending
                score (stable). Walking down that list, a prediction is a true positive when some
                ground-truth window not yet matched at this θ has IoU >= θ with it; it takes the
                unmatched one of highest IoU (ties: the later window, as numpy's reversed argsort),
                else it is a false positive. With the cumulative precision p_k and recall
                r_k = TP_k / |G_q|, AP = sum_k (r_k - r_{k-1}) * max_{j >= k} p_j  (VOC 2011 all-point
                interpolation: the precision envelope at each recall step; r_0 = 0).
    mAP@θ       = mean over queries of AP@θ;  mAP@0.5:0.95 = mean of mAP@θ over θ = 0.50, 0.55, ..., 0.95.

Values are fractions in [0, 1] (Moment-DETR prints them x 100, rounded to 2 decimals). Only the
sequential matching needs a loop, over the <= 10 prediction ranks; each step is one tensor op over
all queries x thresholds x ground-truth windows.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95, as the reference rounds
R1_THRESHOLDS = (0.5, 0.7)
MAP_THRESHOLDS = (0.5, 0.75)
MAX_PRED_WINDOWS = 10
PREFIX = "moment/"


def iou_cross(a: Tensor, b: Tensor) -> Tensor:
    """Temporal IoU of windows a (..., N, 2) with windows b (..., M, 2): (..., N, M)."""
    inter = (torch.minimum(a[..., :, None, 1], b[..., None, :, 1])
             - torch.maximum(a[..., :, None, 0], b[..., None, :, 0])).clamp(min=0)
    union = (a[..., 1] - a[..., 0])[..., :, None] + (b[..., 1] - b[..., 0])[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def pad_windows(windows: Sequence[Sequence[Sequence[float]]], width: int = 2) -> tuple[Tensor, Tensor]:
    """A ragged list of per-query window lists -> (Q, K, width) float64 and its mask (Q, K)."""
    k = max([len(w) for w in windows] + [1])
    out = torch.zeros(len(windows), k, width, dtype=torch.float64)
    mask = torch.zeros(len(windows), k, dtype=torch.bool)
    for q, ws in enumerate(windows):
        if len(ws):
            out[q, :len(ws)] = torch.as_tensor([list(w)[:width] for w in ws], dtype=torch.float64)
            mask[q, :len(ws)] = True
    return out, mask


def average_precision(pred: Tensor, pred_mask: Tensor, gt: Tensor, gt_mask: Tensor,
                      thresholds: Sequence[float] = IOU_THRESHOLDS) -> Tensor:
    """AP per query and threshold, (Q, T). ``pred`` (Q, P, 3) [start, end, score] already cut to the
    first max_pred_windows, ``gt`` (Q, G, 2); masks mark real rows."""
    q, p = pred_mask.shape
    thr = torch.as_tensor(thresholds, dtype=torch.float64)
    # stable sort by descending score; padding last
    key = torch.where(pred_mask, pred[..., 2], torch.full_like(pred[..., 2], -torch.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    pred = pred.gather(1, order[..., None].expand_as(pred))
    valid = pred_mask.gather(1, order)
    iou = iou_cross(pred[..., :2], gt)  # (Q, P, G)
    iou = torch.where(gt_mask[:, None, :], iou, torch.full_like(iou, -1.0))
    g = gt.shape[1]
    locked = torch.zeros(q, len(thr), g, dtype=torch.bool)
    tp = torch.zeros(q, len(thr), p, dtype=torch.float64)
    for k in range(p):  # sequential by nature: an earlier prediction locks its ground truth
        cand = (iou[:, k, None, :] >= thr[None, :, None]) & ~locked & valid[:, k, None, None]  # (Q, T, G)
        masked = torch.where(cand, iou[:, k, None, :].expand_as(cand), torch.full(cand.shape, -2.0,
                                                                                   dtype=torch.float64))
        best = g - 1 - masked.flip(-1).argmax(-1)  # highest IoU, ties -> the later window (reference)
        hit = cand.any(-1)
        tp[:, :, k] = hit.double()
        locked |= torch.nn.functional.one_hot(best, g).bool() & hit[..., None]
    fp = valid.double()[:, None, :] - tp  # a real prediction that matched nothing
    tp_c, fp_c = tp.cumsum(-1), fp.cumsum(-1)
    n_gt = gt_mask.sum(1).clamp(min=1).double()[:, None, None]
    recall = tp_c / n_gt
    denom = tp_c + fp_c
    precision = torch.where(denom > 0, tp_c / denom.clamp(min=1), torch.zeros_like(tp_c))
    # precision envelope: max over later ranks (padding repeats the last point and changes nothing)
    envelope = precision.flip(-1).cummax(-1).values.flip(-1)
    prev = torch.cat([torch.zeros_like(recall[..., :1]), recall[..., :-1]], dim=-1)
    return ((recall - prev) * envelope).sum(-1)


def recall_at_one(pred: Tensor, pred_mask: Tensor, gt: Tensor, gt_mask: Tensor,
                  thresholds: Sequence[float] = R1_THRESHOLDS) -> Tensor:
    """(Q, T): 1 when the first prediction's best IoU with any ground-truth window is >= θ."""
    iou = iou_cross(pred[:, :1, :2], gt)[:, 0]  # (Q, G)
    best = torch.where(gt_mask, iou, torch.zeros_like(iou)).max(-1).values
    best = torch.where(pred_mask[:, 0], best, torch.zeros_like(best))
    return (best[:, None] >= torch.as_tensor(thresholds, dtype=torch.float64)[None, :]).double()


def moment_metrics(predictions: Sequence[Sequence[Sequence[float]]],
                   ground_truth: Sequence[Sequence[Sequence[float]]],
                   max_pred_windows: int | None = MAX_PRED_WINDOWS, prefix: str = PREFIX) -> dict[str, float]:
    """Moment-DETR's metrics over queries: ``predictions[q]`` ranked [start, end, score] rows,
    ``ground_truth[q]`` [start, end] rows (at least one per query). Keys ``moment/R1@0.5``,
    ``moment/R1@0.7``, ``moment/mAP@0.5``, ``moment/mAP@0.75``, ``moment/mAP@0.5:0.95``."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} queries")
    if not len(ground_truth):
        raise ValueError("no queries to evaluate")
    if any(len(g) == 0 for g in ground_truth):
        raise ValueError("every query needs at least one ground-truth window")
    cut = [list(p)[:max_pred_windows] if max_pred_windows is not None else list(p) for p in predictions]
    pred, pmask = pad_windows(cut, width=3)
    gt, gmask = pad_windows(ground_truth, width=2)
    ap = average_precision(pred, pmask, gt, gmask, IOU_THRESHOLDS).mean(0)  # (T,)
    r1 = recall_at_one(pred, pmask, gt, gmask, R1_THRESHOLDS).mean(0)
    out = {f"{prefix}R1@{t:g}": float(v) for t, v in zip(R1_THRESHOLDS, r1)}
    for t in MAP_THRESHOLDS:
        out[f"{prefix}mAP@{t:g}"] = float(ap[IOU_THRESHOLDS.index(t)])
    out[f"{prefix}mAP@0.5:0.95"] = float(ap.mean())
    out[f"{prefix}queries"] = float(len(ground_truth))
    return out


def per_threshold_map(predictions, ground_truth, max_pred_windows: int | None = MAX_PRED_WINDOWS) -> dict[str, float]:
    """mAP at each of the ten thresholds, keyed "0.5" ... "0.95" as Moment-DETR's ``compute_mr_ap``."""
    cut = [list(p)[:max_pred_windows] if max_pred_windows is not None else list(p) for p in predictions]
    pred, pmask = pad_windows(cut, width=3)
    gt, gmask = pad_windows(ground_truth, width=2)
    ap = average_precision(pred, pmask, gt, gmask, IOU_THRESHOLDS).mean(0)
    return {str(t): float(v) for t, v in zip(IOU_THRESHOLDS, ap)}
