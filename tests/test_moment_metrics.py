"""coattn.moments.metrics against hand-made cases and a line-by-line transcription of Moment-DETR's
standalone_eval (compute_mr_r1, compute_mr_ap / compute_average_precision_detection)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from coattn.moments.metrics import IOU_THRESHOLDS, moment_metrics, per_threshold_map


# ---------------------------------------------------------------- the reference, transcribed
def _ref_iou_cross(s1, s2):
    areas1, areas2 = s1[:, 1] - s1[:, 0], s2[:, 1] - s2[:, 0]
    left = np.maximum(s1[:, None, 0], s2[None, :, 0])
    right = np.minimum(s1[:, None, 1], s2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    return inter / (areas1[:, None] + areas2[None, :] - inter)


def _ref_interp(precision, recall):
    mprecision = np.hstack([[0], precision, [0]])
    mrecall = np.hstack([[0], recall, [1]])
    for i in range(len(mprecision) - 1)[::-1]:
        mprecision[i] = max(mprecision[i], mprecision[i + 1])
    idx = np.where(mrecall[1::] != mrecall[0:-1])[0] + 1
    return np.sum((mrecall[idx] - mrecall[idx - 1]) * mprecision[idx])


def _ref_ap(gts, preds, thrs):
    ap = np.zeros(len(thrs))
    if not preds:
        return ap
    lock = np.ones((len(thrs), len(gts))) * -1
    preds = sorted(preds, key=lambda x: -x[2])
    tp, fp = np.zeros((len(thrs), len(preds))), np.zeros((len(thrs), len(preds)))
    for idx, pr in enumerate(preds):
        tiou = _ref_iou_cross(np.array([pr[:2]], float), np.array(gts, float))[0]
        order = tiou.argsort()[::-1]
        for t, thr in enumerate(thrs):
            for j in order:
                if tiou[j] < thr:
                    fp[t, idx] = 1
                    break
                if lock[t, j] >= 0:
                    continue
                tp[t, idx] = 1
                lock[t, j] = idx
                break
            if fp[t, idx] == 0 and tp[t, idx] == 0:
                fp[t, idx] = 1
    tpc, fpc = np.cumsum(tp, 1), np.cumsum(fp, 1)
    rec, prec = tpc / len(gts), tpc / (tpc + fpc)
    return np.array([_ref_interp(prec[t], rec[t]) for t in range(len(thrs))])


def _ref_metrics(preds, gts):
    thrs = [float(f"{e:.2f}") for e in np.linspace(0.5, 0.95, 10)]
    ap = np.array([_ref_ap(g, list(p)[:10], thrs) for p, g in zip(preds, gts)]).mean(0)
    r1 = []
    for p, g in zip(preds, gts):
        top = np.array([p[0][:2]], float)
        ious = _ref_iou_cross(top, np.array(g, float))[0]
        gbest = np.array([g[int(np.argmax(ious))]], float)
        # compute_temporal_iou_batch_paired: union taken as the hull (equal to the union when they overlap)
        inter = max(0, min(top[0, 1], gbest[0, 1]) - max(top[0, 0], gbest[0, 0]))
        hull = max(top[0, 1], gbest[0, 1]) - min(top[0, 0], gbest[0, 0])
        r1.append(inter / hull if hull else 0.0)
    r1 = np.array(r1)
    return {"R1@0.5": np.mean(r1 >= 0.5), "R1@0.7": np.mean(r1 >= 0.7), "mAP@0.5": ap[0],
            "mAP@0.75": ap[5], "mAP@0.5:0.95": ap.mean()}, dict(zip(map(str, thrs), ap))


# ---------------------------------------------------------------- hand-made cases
def test_perfect_prediction_scores_one():
    m = moment_metrics([[[2.0, 5.0, 0.9]]], [[[2.0, 5.0]]])
    assert all(m[f"moment/{k}"] == 1.0 for k in ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95"))


def test_iou_0_6_passes_0_5_only():
    # pred [0, 6] vs gt [0, 10]: IoU 0.6 -> R1@0.5 hit, R1@0.7 miss; AP 1 at 0.5/0.55/0.6, else 0
    m = moment_metrics([[[0.0, 6.0, 1.0]]], [[[0.0, 10.0]]])
    assert m["moment/R1@0.5"] == 1.0 and m["moment/R1@0.7"] == 0.0
    assert m["moment/mAP@0.5"] == 1.0 and m["moment/mAP@0.75"] == 0.0
    assert m["moment/mAP@0.5:0.95"] == pytest.approx(0.3)


def test_r1_uses_any_ground_truth_window_and_first_prediction():
    # the first prediction (not the best-scored) hits the SECOND ground-truth window
    m = moment_metrics([[[20.0, 30.0, 0.1], [0.0, 5.0, 0.9]]], [[[0.0, 5.0], [20.0, 30.0]]])
    assert m["moment/R1@0.7"] == 1.0
    # mAP sorts by score: [0,5] (tp) then [20,30] (tp): AP 1
    assert m["moment/mAP@0.5"] == 1.0


def test_duplicate_predictions_count_once_and_ap_interpolates():
    # two gts; ranked: hit gt0, duplicate of gt0 (fp: gt0 locked), hit gt1
    preds = [[[0, 5, 0.9], [0, 5, 0.8], [10, 15, 0.7]]]
    m = moment_metrics(preds, [[[0, 5], [10, 15]]])
    # precision 1, 1/2, 2/3; recall .5, .5, 1 -> envelope at recall .5 is 1, at 1 is 2/3: AP = .5 + .5 * 2/3
    assert m["moment/mAP@0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_only_first_ten_predictions_count():
    preds = [[[50, 51, 1.0 - i / 100] for i in range(10)] + [[0, 5, 0.0]]]
    assert moment_metrics(preds, [[[0, 5]]])["moment/mAP@0.5"] == 0.0
    assert moment_metrics(preds, [[[0, 5]]], max_pred_windows=None)["moment/mAP@0.5"] == pytest.approx(1 / 11)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        moment_metrics([[[0, 1, 1]]], [[]])
    with pytest.raises(ValueError):
        moment_metrics([], [])


# ---------------------------------------------------------------- against the reference
@pytest.mark.parametrize("seed", range(4))
def test_matches_moment_detr_reference_on_random_queries(seed):
    rng = random.Random(seed)
    preds, gts = [], []
    for _ in range(60):
        dur = 60.0
        g = []
        for _ in range(rng.randint(1, 4)):
            s = rng.choice([rng.uniform(0, 50), float(rng.randint(0, 25) * 2)])  # some exact grid values
            g.append([s, s + rng.choice([rng.uniform(1, 10), 4.0])])
        p = []
        for _ in range(rng.randint(1, 14)):
            if rng.random() < 0.5:  # near a ground truth window
                b = rng.choice(g)
                j = rng.choice([0.0, rng.uniform(-2, 2)])
                p.append([b[0] + j, b[1] + j * rng.random(), 0.0])
            else:
                s = rng.uniform(0, dur - 5)
                p.append([s, s + rng.uniform(0.5, 12), 0.0])
        for row in p:  # ties in score on purpose
            row[2] = rng.choice([0.5, round(rng.random(), 2)])
        preds.append(p)
        gts.append(g)
    ref, ref_thr = _ref_metrics(preds, gts)
    ours = moment_metrics(preds, gts)
    for k, v in ref.items():
        assert ours[f"moment/{k}"] == pytest.approx(v, abs=1e-12), k
    ours_thr = per_threshold_map(preds, gts)
    assert list(ours_thr) == [str(t) for t in IOU_THRESHOLDS]
    for k, v in ref_thr.items():
        assert ours_thr[k] == pytest.approx(v, abs=1e-12), k
