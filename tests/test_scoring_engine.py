"""The scoring engine equals the naive grid: tiles of any size, row shortlists, pair lists,
the hoisted iterating path (shared weights too), FLOP counts, progress reporting."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from coattn.retrieval.tiling import (
    _Progress, executed_flops_per_pair, score_matrix, score_pair_list, score_rows, uses_fast_path,
)
from tests.test_coattention import feats, grid, make_model

KINDS = ["single", "stacking", "iterating"]


def setup(kind: str, share: bool = False, depth: int = 3):
    m = make_model(kind, depth=depth, share=share)
    text = feats(7, 5, 20, [5, 4, 3, 2, 1, 5, 5])
    audio = feats(6, 6, 24, [6, 3, 5, 1, 6, 2], seed=4)
    with torch.no_grad():
        return m, m.prepare_text(text), m.prepare_audio(audio), grid(m, text, audio)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("tile", [1, 5, 13, 1000])
def test_iterating_engine_equals_grid(share, tile):
    m, pt, pa, full = setup("iterating", share)
    assert uses_fast_path(m, pt)
    torch.testing.assert_close(score_matrix(m, pt, pa, tile_pairs=tile), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_and_pair_lists_equal_grid(kind):
    m, pt, pa, full = setup(kind)
    g = torch.Generator().manual_seed(0)
    cols = torch.stack([torch.randperm(6, generator=g)[:4] for _ in range(7)])  # a shortlist per caption
    for tile in (5, 100):
        torch.testing.assert_close(score_rows(m, pt, pa, cols, tile_pairs=tile), full.gather(1, cols),
                                   atol=1e-5, rtol=1e-5)
    rows = torch.tensor([6, 0, 0, 3])  # explicit caption rows, repeated and out of order
    torch.testing.assert_close(score_rows(m, pt, pa, cols[:4], rows=rows, tile_pairs=3), full[rows[:, None], cols[:4]],
                               atol=1e-5, rtol=1e-5)
    ti = torch.randint(0, 7, (23,), generator=g)
    aj = torch.randint(0, 6, (23,), generator=g)
    for tile in (4, 64):
        torch.testing.assert_close(score_pair_list(m, pt, pa, ti, aj, tile_pairs=tile), full[ti, aj],
                                   atol=1e-5, rtol=1e-5)
    assert score_pair_list(m, pt, pa, ti[:0], aj[:0]).shape == (0,)


def test_training_mode_takes_generic_path():
    m, pt, pa, _ = setup("iterating")
    m.train()
    assert not uses_fast_path(m, pt)
    m.eval()
    from coattn.coattention import capture_attention
    with capture_attention(m.cascade):
        assert not uses_fast_path(m, pt)  # capture needs MultiHeadAttention.forward


@pytest.mark.parametrize("kind", KINDS)
def test_flops_per_pair_matches_flop_counter(kind):
    m = make_model(kind, depth=2)
    text, audio = feats(3, 5, 20), feats(4, 6, 24)
    pt, pa = m.prepare_text(text), m.prepare_audio(audio)
    ti, aj = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m.cascade(pt, ti, pa, aj)  # the math backend runs attention as counted matmuls
    assert fc.get_total_flops() == 4 * m.cascade.flops_per_pair(5, 6)


def test_executed_flops_of_the_fast_path():
    m = make_model("iterating", depth=2)
    text, audio = feats(3, 5, 20), feats(4, 6, 24)
    pt, pa = m.prepare_text(text), m.prepare_audio(audio)
    rows = torch.arange(3)
    inv = torch.arange(4).expand(3, -1)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        stage = m.cascade.clip_stage(pa, torch.arange(4))  # per-clip work, outside the count
        with FlopCounterMode(display=False) as fc:
            m.score_block(pt, rows, stage, inv)
    counted = fc.get_total_flops() - 12 * 2 * 32 * 16  # minus the pair projection (d=32 -> E=16)
    assert counted == pytest.approx(12 * executed_flops_per_pair(m.cascade, 5, 6, pairs_per_caption=4))
    assert executed_flops_per_pair(m.cascade, 5, 6) < m.cascade.flops_per_pair(5, 6)


def test_progress_only_for_long_jobs(caplog, monkeypatch):
    p = _Progress(1000, None, min_seconds=3600)
    p.update(10)
    assert p.enabled is False and p.bar is None
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="coattn.retrieval.tiling"):
        p = _Progress(1000, True)
        p.update(10)
        p.update(10)
        p.close()
    assert p.enabled and p.bar is None  # not a terminal: log lines, not a bar
    assert any("about" in r.getMessage() for r in caplog.records)
