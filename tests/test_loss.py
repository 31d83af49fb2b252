"""NT-Xent against a hand computation, same-clip masking, temperature."""
from __future__ import annotations

import math

import pytest
import torch

from coattn.loss import Temperature, nt_xent


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_nt_xent_matches_hand_computation():
    z = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 0.2]]
    clips = torch.tensor([10, 11, 12])
    rows = sum(lse(z[i]) - z[i][i] for i in range(3)) / 3
    cols = sum(lse([z[i][j] for i in range(3)]) - z[j][j] for j in range(3)) / 3
    got = nt_xent(torch.tensor(z), clips, clips)
    assert got.item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)


def test_same_clip_captions_are_not_negatives():
    # Items 0 and 1 show the same clip (id 7): z[0][1] and z[1][0] must not count at all.
    z = torch.tensor([[2.0, 5.0, -1.0], [4.0, 1.0, 0.3], [1.5, -0.5, 0.2]])
    clips = torch.tensor([7, 7, 8])
    base = nt_xent(z, clips, clips)
    z2 = z.clone()
    z2[0, 1], z2[1, 0] = -30.0, 99.0
    assert nt_xent(z2, clips, clips).item() == pytest.approx(base.item(), rel=1e-6)
    # Hand computation with the masked entries removed.
    zl = z.tolist()
    rows = (lse([zl[0][0], zl[0][2]]) - zl[0][0] + lse([zl[1][1], zl[1][2]]) - zl[1][1]
            + lse(zl[2]) - zl[2][2]) / 3
    cols = (lse([zl[0][0], zl[2][0]]) - zl[0][0] + lse([zl[1][1], zl[2][1]]) - zl[1][1]
            + lse([zl[0][2], zl[1][2], zl[2][2]]) - zl[2][2]) / 3
    assert base.item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)


def test_loss_is_fp32_and_differentiable_in_bf16():
    z = torch.randn(4, 4, dtype=torch.bfloat16, requires_grad=True)
    loss = nt_xent(z, torch.arange(4), torch.arange(4))
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad is not None


def test_temperature_learned_fixed_and_clamped():
    t = Temperature(0.07, learn=True)
    assert t.tau == pytest.approx(0.07, rel=1e-5) and t.log_scale.requires_grad
    with torch.no_grad():
        t.log_scale.fill_(20.0)  # would be tau = 2e-9 without the clamp
    assert t.tau == pytest.approx(0.01, rel=1e-5)
    f = Temperature(0.05, learn=False)
    assert not any(True for _ in f.parameters()) and f.tau == pytest.approx(0.05, rel=1e-5)
    with pytest.raises(ValueError):
        Temperature(0.0)
