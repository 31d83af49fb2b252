"""Cascades: shapes, padding invariance, information flow, gradient flow, tiled scoring."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from coattn.coattention import CoAttentionCascade
from coattn.features import SequenceFeatures
from coattn.model import CoAttnModel
from coattn.retrieval.tiling import score_matrix

KINDS = ["single", "stacking", "iterating"]


class FakeEncoder(nn.Module):
    """Stands in for an encoder: the tests feed features directly."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim


def make_model(kind: str, depth: int = 2, share: bool = False, seed: int = 0) -> CoAttnModel:
    torch.manual_seed(seed)
    cascade = CoAttentionCascade(kind=kind, depth=depth, width=32, heads=4, ffn_dim=64, dropout=0.0,
                                 share_weights=share)
    return CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).eval()


def feats(n: int, length: int, dim: int, lengths: list[int] | None = None, seed: int = 1) -> SequenceFeatures:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, length, dim, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    for i, ln in enumerate(lengths or []):
        mask[i, ln:] = False
    return SequenceFeatures(states, mask, states.mean(1))


def grid(model: CoAttnModel, text: SequenceFeatures, audio: SequenceFeatures) -> torch.Tensor:
    return model.score_grid(model.prepare_text(text), model.prepare_audio(audio))


@pytest.mark.parametrize("kind", KINDS)
def test_grid_shape_and_range(kind):
    m = make_model(kind)
    s = grid(m, feats(3, 7, 20, [7, 4, 2]), feats(5, 6, 24))
    assert s.shape == (3, 5)
    assert torch.all(s.abs() <= 1 + 1e-5)  # cosine similarities


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_changes_real_outputs(kind):
    m = make_model(kind)
    text, audio = feats(3, 5, 20, [5, 3, 1]), feats(4, 6, 24, [6, 6, 2, 4])
    ref = grid(m, text, audio)
    # Append 4 padding positions filled with large junk on both sides: scores must not move.
    pad_t = SequenceFeatures(torch.cat([text.states, 1e3 * torch.randn(3, 4, 20)], 1),
                             torch.cat([text.mask, torch.zeros(3, 4, dtype=torch.bool)], 1), text.pooled)
    pad_a = SequenceFeatures(torch.cat([audio.states, 1e3 * torch.randn(4, 4, 24)], 1),
                             torch.cat([audio.mask, torch.zeros(4, 4, dtype=torch.bool)], 1), audio.pooled)
    torch.testing.assert_close(grid(m, pad_t, pad_a), ref, atol=1e-5, rtol=1e-5)
    # And junk already inside the padded region of the original batch is ignored too.
    junk_t = SequenceFeatures(text.states.clone(), text.mask, text.pooled)
    junk_t.states[~text.mask] = 1e3
    torch.testing.assert_close(grid(m, junk_t, audio), ref, atol=1e-5, rtol=1e-5)


def test_iterating_text_is_fixed_and_stacking_text_sees_audio():
    text, a1 = feats(2, 5, 20), feats(3, 6, 24, seed=2)
    a2 = feats(3, 6, 24, seed=3)
    it = make_model("iterating")
    ti, aj = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2])
    prep = it.prepare_text(text)
    t_vec1, _ = it.cascade(prep, ti, it.prepare_audio(a1), aj)
    t_vec2, _ = it.cascade(prep, ti, it.prepare_audio(a2), aj)
    torch.testing.assert_close(t_vec1, t_vec2)  # the text stream never sees the audio
    st = make_model("stacking")
    prep = st.prepare_text(text)
    t_vec1, _ = st.cascade(prep, ti, st.prepare_audio(a1), aj)
    t_vec2, _ = st.cascade(prep, ti, st.prepare_audio(a2), aj)
    assert not torch.allclose(t_vec1, t_vec2)  # stacking updates both modalities


def test_depth_and_shared_weights():
    assert make_model("single", depth=5).cascade.depth == 1
    n = lambda m: sum(p.numel() for p in m.cascade.parameters())  # noqa: E731
    assert n(make_model("iterating", depth=4, share=True)) == n(make_model("iterating", depth=1))
    assert n(make_model("iterating", depth=4)) > n(make_model("iterating", depth=2))
    with pytest.raises(ValueError, match="share_weights"):
        CoAttentionCascade(kind="stacking", share_weights=True)
    with pytest.raises(ValueError, match="divisible"):
        CoAttentionCascade(width=30, heads=4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_every_parameter(kind):
    m = make_model(kind).train()
    text, audio = feats(3, 5, 20, [5, 3, 2]), feats(3, 6, 24)
    text.states.requires_grad_(True)
    audio.states.requires_grad_(True)
    grid(m, text, audio).sum().backward()
    # the last bias of an attention pool's score MLP shifts every logit of a softmax alike: its
    # gradient is 0 in exact arithmetic (rounding noise, or exactly 0, depending on the CPU's kernels)
    missing = [n for n, p in m.named_parameters() if n.startswith(("cascade", "audio_in", "text_in", "pair_"))
               and "temperature" not in n and not n.endswith("pool.score.3.bias")
               and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    assert text.states.grad.abs().sum() > 0 and audio.states.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tile", [1, 5, 7, 1000])
def test_tiled_scoring_equals_full_grid(kind, tile):
    m = make_model(kind)
    text, audio = feats(7, 5, 20, [5, 4, 3, 2, 1, 5, 5]), feats(4, 6, 24, [6, 3, 5, 1])
    with torch.no_grad():
        full = grid(m, text, audio)
        tiled = score_matrix(m, m.prepare_text(text), m.prepare_audio(audio), tile_pairs=tile)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)


def test_pair_list_matches_grid():
    m = make_model("stacking")
    text, audio = feats(3, 5, 20), feats(4, 6, 24)
    with torch.no_grad():
        full = grid(m, text, audio)
        ti, aj = torch.tensor([2, 0, 1, 2]), torch.tensor([3, 1, 0, 0])
        some = m.score_pairs(m.prepare_text(text), ti, m.prepare_audio(audio), aj)
    torch.testing.assert_close(some, full[ti, aj], atol=1e-5, rtol=1e-5)


def test_feature_norm_ignores_padding():
    """BatchNorm statistics come from real positions only: padding junk changes nothing."""
    torch.manual_seed(0)
    cascade = CoAttentionCascade(kind="iterating", depth=1, width=32, heads=4, ffn_dim=64, dropout=0.0)
    m = CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16, feature_norm=True).train()
    text, audio = feats(3, 5, 20, [5, 3, 1]), feats(4, 6, 24)
    ref = grid(m, text, audio)
    junk = SequenceFeatures(text.states.clone(), text.mask, text.pooled)
    junk.states[~text.mask] = 1e4
    torch.testing.assert_close(grid(m, junk, audio), ref, atol=1e-5, rtol=1e-5)
    # Standardised: the cascade input of real tokens has ~zero mean per feature over the batch.
    x = m.text_in.norm(text.states[text.mask])
    assert x.mean(0).abs().max() < 1e-5
