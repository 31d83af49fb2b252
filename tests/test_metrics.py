"""Metrics: hand-computed cases, the tie rule, chance levels vs Monte-Carlo, bootstrap CIs."""

from __future__ import annotations

import math

import pytest
import torch

from coattn import metrics as M

# 3 clips x 2 captions. caption_clip = [0, 0, 1, 1, 2, 2].
HAND_SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5],  # c0 -> clip 0: best            rank 1
        [0.2, 0.8, 0.1],  # c1 -> clip 0: 0.8 above       rank 2
        [0.3, 0.7, 0.9],  # c2 -> clip 1: 0.9 above       rank 2
        [0.1, 0.6, 0.2],  # c3 -> clip 1: best            rank 1
        [0.5, 0.4, 0.3],  # c4 -> clip 2: worst           rank 3
        [0.0, 0.3, 0.6],  # c5 -> clip 2: best            rank 1
    ]
)
HAND_CC = torch.tensor([0, 0, 1, 1, 2, 2])


def brute_t2a(scores: torch.Tensor, cc: torch.Tensor) -> list[int]:
    """Reference: sort by (-score, index) in pure Python."""
    out = []
    for i, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        out.append(order.index(int(cc[i])) + 1)
    return out


def brute_a2t(scores: torch.Tensor, cc: torch.Tensor) -> list[int]:
    out = []
    cols = scores.T.tolist()
    for i in range(scores.shape[0]):
        col = cols[int(cc[i])]
        order = sorted(range(len(col)), key=lambda j: (-col[j], j))
        out.append(order.index(i) + 1)
    return out


def test_hand_ranks():
    assert M.text_to_audio_ranks(HAND_SCORES, HAND_CC).tolist() == [1, 2, 2, 1, 3, 1]
    # Columns sorted descending:
    #   clip 0: c0 .9, c4 .5, c2 .3, c1 .2, c3 .1, c5 0   -> its captions c0, c1 at 1, 4
    #   clip 1: c1 .8, c2 .7, c3 .6, c4 .4, c5 .3, c0 .1  -> c2, c3 at 2, 3
    #   clip 2: c2 .9, c5 .6, c0 .5, c4 .3, c3 .2, c1 .1  -> c4, c5 at 4, 2
    assert M.audio_to_text_caption_ranks(HAND_SCORES, HAND_CC).tolist() == [1, 4, 2, 3, 4, 2]
    assert M.audio_to_text_ranks(HAND_SCORES, HAND_CC).tolist() == [[1, 4], [2, 3], [2, 4]]


def test_hand_metrics():
    got = M.retrieval_metrics(HAND_SCORES, HAND_CC)
    assert list(got) == [
        "t2a_mAP@10", "t2a_R@1", "t2a_R@5", "t2a_R@10", "t2a_medR", "t2a_meanR",
        "a2t_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "a2t_medR",
    ]
    expected = {
        # t2a ranks [1, 2, 2, 1, 3, 1]: AP = 1, 1/2, 1/2, 1, 1/3, 1 -> (13/3)/6 = 13/18
        "t2a_mAP@10": 13 / 18,
        "t2a_R@1": 3 / 6,
        "t2a_R@5": 1.0,
        "t2a_R@10": 1.0,
        "t2a_medR": 1.5,  # sorted [1, 1, 1, 2, 2, 3]: midpoint of 1 and 2
        "t2a_meanR": 10 / 6,
        # a2t: clip 0 ranks {1, 4}: (1/1 + 2/4)/2 = 3/4; clip 1 {2, 3}: (1/2 + 2/3)/2 = 7/12;
        # clip 2 {2, 4}: (1/2 + 2/4)/2 = 1/2 -> mean (9 + 7 + 6)/36 = 11/18
        "a2t_mAP@10": 11 / 18,
        "a2t_R@1": 1 / 3,  # best ranks [1, 2, 2]
        "a2t_R@5": 1.0,
        "a2t_R@10": 1.0,
        "a2t_medR": 2.0,
    }
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_ties_follow_index_rule():
    cc = torch.tensor([0, 1, 2, 2])
    const = torch.zeros(4, 3)
    # Constant scores: the true clip's rank is 1 + its index.
    assert M.text_to_audio_ranks(const, cc).tolist() == [1, 2, 3, 3]
    # a2t: every column constant -> caption i ranks i + 1.
    assert M.audio_to_text_ranks(const, cc).tolist() == [[1, M.A2T_PAD], [2, M.A2T_PAD], [3, 4]]
    # True clip tied with a lower-index clip ranks below it; with a higher-index one, above it.
    s = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])
    assert M.text_to_audio_ranks(s, torch.tensor([1, 0])).tolist() == [2, 1]


def test_topk_matches_ranks_and_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (40, 25), generator=g).float()  # many ties
    cc = torch.randint(0, 25, (40,), generator=g)
    ranks = M.text_to_audio_ranks(s, cc)
    assert ranks.tolist() == brute_t2a(s, cc)
    assert M.audio_to_text_caption_ranks(s, cc).tolist() == brute_a2t(s, cc)
    top = M.topk(s, k=25)
    assert [top[i].tolist().index(int(cc[i])) + 1 for i in range(40)] == ranks.tolist()


def test_blocking_does_not_change_results(monkeypatch):
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 3, (30, 7), generator=g).float()
    cc = torch.randint(0, 7, (30,), generator=g)
    full = M.retrieval_metrics(s, cc)
    monkeypatch.setattr(M, "_BLOCK", 8)  # forces blocks of 1 caption
    assert M.retrieval_metrics(s, cc) == full


def test_a2t_ap_divides_by_number_of_captions():
    # Clip 0 has captions 0..4; 15 other captions belong to clip 1. Column 0:
    # c0 1.0 (rank 1), two others 0.9, 0.8 (ranks 2, 3), c1 0.7 (rank 4), 13 others 0.5
    # (ranks 5..17), c2..c4 -1 (ranks 18..20) -> AP = (1/1 + 2/4) / 5 = 0.3.
    cc = torch.tensor([0] * 5 + [1] * 15)
    col0 = torch.tensor([1.0, 0.7, -1, -1, -1, 0.9, 0.8] + [0.5] * 13)
    s = torch.stack([col0, torch.zeros(20)], dim=1)
    pq = M.per_query_metrics(s, cc)
    assert M.audio_to_text_ranks(s, cc)[0, :5].tolist() == [1, 4, 18, 19, 20]  # padded to 15
    assert pq["a2t_mAP@10"][0].item() == pytest.approx(0.3)
    assert pq["a2t_R@1"][0].item() == 1.0


def test_rank_beyond_cutoff_gives_zero_ap():
    # 12 clips; caption 0's clip is the 10th best, caption 1's the 12th (worst).
    row = torch.arange(12, 0, -1).float()  # clip j scores 12 - j: clip j ranks j + 1
    s = torch.stack([row, row])
    pq = M.per_query_metrics(s, torch.tensor([9, 11]))
    assert pq["t2a_mAP@10"].tolist() == pytest.approx([0.1, 0.0])
    assert pq["t2a_R@10"].tolist() == [1.0, 0.0]


def test_nan_raises():
    s = HAND_SCORES.clone()
    s[2, 1] = float("nan")
    for fn in (M.text_to_audio_ranks, M.audio_to_text_ranks, M.retrieval_metrics):
        with pytest.raises(ValueError):
            fn(s, HAND_CC)
    with pytest.raises(ValueError):
        M.topk(s)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_dtypes(dtype):
    s = (HAND_SCORES * 10).round().to(dtype)  # exact in every dtype
    assert M.retrieval_metrics(s, HAND_CC) == M.retrieval_metrics((HAND_SCORES * 10).round(), HAND_CC)


def test_chance_closed_forms():
    ch = M.chance_metrics(n_clips=1045, n_captions_per_clip=5)
    assert ch["t2a_R@1"] == pytest.approx(1 / 1045)
    assert ch["t2a_mAP@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 1045)
    n = 5225
    assert ch["a2t_R@10"] == pytest.approx(1 - math.comb(n - 5, 10) / math.comb(n, 10))
    assert ch["t2a_meanR"] == 523.0 and ch["t2a_medR"] == 523.0
    # Same from caption_clip, and c = 1 reduces a2t to the t2a form over N captions.
    assert M.chance_metrics(torch.arange(1045).repeat_interleave(5)) == ch
    ch1 = M.chance_metrics(torch.arange(50))
    assert ch1["a2t_mAP@10"] == pytest.approx(ch1["t2a_mAP@10"])


def test_chance_matches_monte_carlo():
    counts = [1, 2, 3, 2, 1, 1, 3, 2]  # 8 clips, 15 captions
    cc = torch.repeat_interleave(torch.arange(8), torch.tensor(counts))
    exact = M.chance_metrics(cc)
    g = torch.Generator().manual_seed(0)
    trials = [M.per_query_metrics(torch.rand(15, 8, generator=g), cc) for _ in range(3000)]
    for key in exact:
        pooled = torch.cat([t[key] for t in trials])
        if key.endswith("medR"):
            # medR chance is the median of the pooled rank distribution.
            assert M._median(pooled).item() == pytest.approx(exact[key], abs=0.51), key
            continue
        se = pooled.std().item() / math.sqrt(pooled.numel())
        assert abs(pooled.mean().item() - exact[key]) < 4 * se + 1e-9, (key, pooled.mean(), exact[key])


def test_bootstrap_ci():
    g = torch.Generator().manual_seed(0)
    pq = M.per_query_metrics(torch.rand(200, 40, generator=g), torch.randint(0, 40, (200,), generator=g))
    point = M.aggregate(pq)
    ci = M.bootstrap_ci(pq, n_boot=500, seed=3)
    assert set(ci) == set(pq)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi, k
    assert M.bootstrap_ci(pq, n_boot=500, seed=3) == ci  # deterministic under seed
    assert M.bootstrap_ci(pq, n_boot=500, seed=4) != ci
    # Adding an unrelated metric does not move the others (per-prefix generators).
    assert M.bootstrap_ci({"t2a_R@1": pq["t2a_R@1"]}, n_boot=500, seed=3)["t2a_R@1"] == ci["t2a_R@1"]


def test_bootstrap_narrows_with_more_queries():
    g = torch.Generator().manual_seed(0)
    small = {"t2a_R@1": (torch.rand(50, generator=g) < 0.3).double()}
    large = {"t2a_R@1": (torch.rand(5000, generator=g) < 0.3).double()}
    w = lambda ci: ci["t2a_R@1"][1] - ci["t2a_R@1"][0]  # noqa: E731
    assert w(M.bootstrap_ci(large)) < 0.3 * w(M.bootstrap_ci(small))  # ~ sqrt(50/5000) = 0.1


def test_clips_without_captions_are_not_a2t_queries():
    s = HAND_SCORES
    cc = torch.tensor([0, 0, 2, 2, 2, 2])  # clip 1 has no caption
    pq = M.per_query_metrics(s, cc)
    assert pq["a2t_R@1"].numel() == 2
    assert M.chance_metrics(cc, n_clips=3)["t2a_R@1"] == pytest.approx(1 / 3)
