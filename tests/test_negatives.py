"""The pair term's negatives: hard mining picks the right pairs and equals B x B at K = B - 1; time
rotation keeps the sounds and moves them; rewritten captions join the clip's softmax; positions make
the cascade see time."""
from __future__ import annotations

import pytest
import torch

from coattn.coattention import CoAttentionCascade
from coattn.features import SequenceFeatures
from coattn.loss import RetrievalLoss
from coattn.model import CoAttnModel
from coattn.negatives import mine, rotate_frames
from tests.test_coattention import FakeEncoder, feats


def model(kind="iterating", positions="none", seed=0) -> CoAttnModel:
    torch.manual_seed(seed)
    cascade = CoAttentionCascade(kind=kind, depth=2, width=32, heads=4, ffn_dim=64, dropout=0.0, positions=positions)
    return CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).train()


def batch(b=6, seed=1):
    text, audio = feats(b, 5, 20, seed=seed), feats(b, 8, 24, seed=seed + 1)
    clips = torch.tensor([0, 1, 2, 2, 3, 4][:b])  # items 2 and 3 show the same clip
    return text, audio, clips


def test_mine_takes_the_hardest_valid_then_random_ones():
    sim = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2], [0.3, 0.9, 0.95, 0.1, 0.5]])
    invalid = torch.tensor([[False, False, True, False, False], [False] * 5])  # column 2 is row 0's own clip
    cols, valid = mine(sim, invalid, torch.tensor([0, 1]), k=2, r=1, generator=torch.Generator().manual_seed(0))
    assert cols[:, 0].tolist() == [0, 1]  # the target first
    assert cols[0, 1:3].tolist() == [3, 4] and cols[1, 1:3].tolist() == [2, 4]  # hardest valid, target and own clip out
    assert cols[0, 3] == 1 and cols[1, 3] in (0, 3) and valid.all()
    cols, valid = mine(sim, invalid, torch.tensor([0, 1]), k=4, r=0)
    assert valid[0].tolist() == [True, True, True, True, False]  # only 3 valid negatives for row 0


@pytest.mark.parametrize("kind", ["iterating", "stacking"])
def test_hard_with_every_negative_equals_the_full_grid(kind):
    text, audio, clips = batch()
    m = model(kind)
    full = RetrievalLoss(pair_negatives="local")(m, audio, text, clips, clips)
    hard = RetrievalLoss(pair_negatives="hard", pair_k=5, pair_random=0)(m, audio, text, clips, clips)
    torch.testing.assert_close(hard["pair_loss"], full["pair_loss"], rtol=1e-5, atol=1e-6)
    hard["loss"].backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n.startswith("cascade.audio_layers"))


def test_hard_costs_b_times_k_plus_one_passes(monkeypatch):
    text, audio, clips = batch()
    m = model()
    seen = []
    original = m.score_block

    def count(text_p, rows, stage, inv):
        seen.append(inv.numel())
        return original(text_p, rows, stage, inv)

    monkeypatch.setattr(m, "score_block", count)
    RetrievalLoss(pair_negatives="hard", pair_k=2, pair_random=1)(m, audio, text, clips, clips)
    assert sum(seen) == 6 * 4 + 6 * 4  # captions x (1 + K + R), then clips x (1 + K + R) (one pass each)


def test_rotation_moves_real_frames_only():
    f = SequenceFeatures(torch.arange(10.0)[None, :, None].repeat(2, 1, 3), torch.ones(2, 10, dtype=torch.bool),
                         torch.zeros(2, 3))
    f.mask[1, 6:] = False
    r = rotate_frames(f, torch.Generator().manual_seed(0))
    for i, n in ((0, 10), (1, 6)):
        got = r.states[i, :n, 0].tolist()
        assert sorted(got) == list(range(n)) and got != list(range(n))  # same frames, other order
        assert got == [(k - got.index(0)) % n for k in range(n)]  # a rotation
    assert torch.equal(r.states[1, 6:], f.states[1, 6:])


def test_positions_make_reversed_frames_score_differently():
    text, audio, _ = batch()
    reversed_audio = SequenceFeatures(audio.states.flip(1), audio.mask, audio.pooled)
    for positions, changes in (("none", False), ("learned", True), ("sinusoidal", True), ("relative", True)):
        m = model(positions=positions).eval()
        a = m.score_grid(m.prepare_text(text), m.prepare_audio(audio))
        b = m.score_grid(m.prepare_text(text), m.prepare_audio(reversed_audio))
        assert ((a - b).abs().max() > 1e-4) == changes, positions


def test_time_and_caption_negatives_extend_the_softmax():
    text, audio, clips = batch()
    m = model(positions="learned")
    captions = ["a beep, then a bell"] * 3 + ["two dogs bark"] * 2 + ["rain"]
    encoded = []

    def encode_text(texts):
        encoded.extend(texts)
        return feats(len(texts), 5, 20, seed=9)

    m.encode_text = encode_text
    base = RetrievalLoss()(m, audio, text, clips, clips, captions)
    more = RetrievalLoss(time_negatives=True, caption_negatives=True)(m, audio, text, clips, clips, captions)
    assert more["pair_loss"] > base["pair_loss"]  # more negatives in each softmax: a larger loss at init
    assert encoded == ["a bell, then a beep"] * 3 + ["three dogs bark"] * 2  # the rewrites, none of "rain"
    more["loss"].backward()
    assert m.cascade.audio_positions.grad is not None
