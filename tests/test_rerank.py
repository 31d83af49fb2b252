"""Two-stage retrieval: K >= size is exact, shortlist semantics, cost accounting."""
from __future__ import annotations

import pytest
import torch

from coattn.metrics import retrieval_metrics
from coattn.metrics import topk as top_k_stable
from coattn.retrieval.rerank import rerank_matrix, shortlist_mask
from tests.test_coattention import feats, grid, make_model


def setup(kind="iterating", n=9, m=6):
    model = make_model(kind)
    text, audio = feats(n, 5, 20, seed=1), feats(m, 6, 24, seed=2)
    with torch.no_grad():
        dual = model.dual_embed_text(text) @ model.dual_embed_audio(audio).t()
        return model, model.prepare_text(text), model.prepare_audio(audio), dual, grid(model, text, audio)


@pytest.mark.parametrize("kind", ["iterating", "stacking"])
def test_k_at_least_size_is_exact(kind):
    model, pt, pa, dual, exact = setup(kind)
    scores, info = rerank_matrix(model, pt, pa, dual, k=100)
    torch.testing.assert_close(scores, exact, atol=1e-5, rtol=1e-5)
    assert info.cascade_passes == info.exact_passes == 54 and info.cost_fraction == 1.0
    # and the t2a shortlist alone covers every pair once K >= M
    scores, info = rerank_matrix(model, pt, pa, dual, k=6, both_directions=False)
    torch.testing.assert_close(scores, exact, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("both", [True, False])
def test_shortlist_semantics(both):
    model, pt, pa, dual, exact = setup()
    k = 2
    scores, info = rerank_matrix(model, pt, pa, dual, k=k, tile_pairs=5, both_directions=both)
    cols, mask = shortlist_mask(dual, k, both)
    assert info.cascade_passes == int(mask.sum()) and info.k == k
    assert info.cascade_passes <= k * (9 + 6) and info.cascade_passes < 54
    # re-scored entries are the cascade's scores; the rest rank strictly below all of them
    torch.testing.assert_close(scores[mask], exact[mask], atol=1e-5, rtol=1e-5)
    assert scores[~mask].max() < scores[mask].min()
    # ... and keep the dual encoder's order among themselves (a constant shift of s_dual)
    shift = scores[~mask] - dual[~mask]
    torch.testing.assert_close(shift, shift[0].expand_as(shift))
    # each caption's top k: its shortlist (and any a2t extras) in cascade order
    for i in range(9):
        row = torch.argsort(scores[i], descending=True, stable=True)
        n_short = int(mask[i].sum())
        top = row[:n_short]
        assert set(top.tolist()) == set(mask[i].nonzero().squeeze(1).tolist())
        assert set(cols[i].tolist()) <= set(top.tolist())
        assert torch.all(exact[i, top][:-1] >= exact[i, top][1:] - 1e-6)  # cascade order
    if not both:
        assert torch.equal(mask.sum(1), torch.full((9,), k))
    # metrics stay computable in both directions
    caption_clip = torch.arange(9) % 6
    m = retrieval_metrics(scores, caption_clip)
    assert 0 <= m["t2a_mAP@10"] <= 1 and 0 <= m["a2t_mAP@10"] <= 1


def test_top_k_stable_ties_to_lower_index():
    s = torch.tensor([[0.5, 0.9, 0.9, 0.1]])
    assert top_k_stable(s, 3).tolist() == [[1, 2, 0]]
    assert top_k_stable(s, 10).shape == (1, 4)
    with pytest.raises(ValueError):
        model, pt, pa, dual, _ = setup()
        rerank_matrix(model, pt, pa, dual, k=0)
