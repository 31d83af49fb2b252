"""The two-stage recipe's parts (issue: co-attention must earn its cost): the warm start copies
exactly stage 1's towers and dual heads; fusion with lambda = 0 is the pair score; the probe counts
wins, ties and the rewrites it applies to; zero-padded frames are masked out of the cascade."""
from __future__ import annotations

import csv
import random
import zlib

import pytest
import torch

from coattn.captions import change_count, has_order_cue, reverse_order
from coattn.coattention import CoAttentionCascade
from coattn.errors import CheckpointError
from coattn.features import SequenceFeatures
from coattn.model import CoAttnModel
from coattn.probe import ProbeItem, applicability, items_by_rewriting, run_probe
from coattn.retrieval import Retriever
from coattn.train.warm_start import PARTS, warm_start
from tests.conftest import SHARED_DATA
from tests.test_coattention import FakeEncoder, feats


def model(kind="iterating", seed=0, positions="relative") -> CoAttnModel:
    torch.manual_seed(seed)
    cascade = CoAttentionCascade(kind=kind, depth=2, width=32, heads=4, ffn_dim=64, dropout=0.0, positions=positions)
    return CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).eval()


def test_warm_start_copies_exactly_the_towers_and_dual_heads(tmp_path):
    stage1 = model("none", seed=1)
    torch.save({"state_dict": {f"model.{k}": v for k, v in stage1.state_dict().items()}}, tmp_path / "s1.ckpt")
    stage2 = model("iterating", seed=2)
    before = {k: v.clone() for k, v in stage2.state_dict().items()}
    copied = warm_start(stage2, tmp_path / "s1.ckpt")
    towers = [k for k in stage2.state_dict() if k.startswith(PARTS)]
    assert copied == len(towers) > 0
    for k, v in stage2.state_dict().items():
        if k.startswith(PARTS):
            assert torch.equal(v, stage1.state_dict()[k]), k
        else:  # the cascade and pair heads keep their fresh initialisation
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(before[k], stage1.state_dict()[k]) for k in towers)  # something did change


def test_warm_start_names_what_does_not_fit(tmp_path):
    with pytest.raises(CheckpointError, match="init_from.*demo_dual"):
        warm_start(model(), tmp_path / "absent.ckpt")
    other = CoAttnModel(FakeEncoder(24), FakeEncoder(20), CoAttentionCascade(kind="none"), embed_dim=8)
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "s1.ckpt")
    with pytest.raises(CheckpointError, match="of another shape.*dual_"):
        warm_start(model(), tmp_path / "s1.ckpt")


@pytest.mark.parametrize("mode", ["exact", "rerank"])
def test_fusion_zero_is_the_pair_score_and_lambda_adds_the_dual_one(mode):
    m = model()
    text, audio = feats(7, 5, 20, seed=3), feats(5, 8, 24, seed=4)
    r = Retriever(mode=mode, rerank_k=2)
    pair_only = r(m, audio, text, fusion=0.0)
    fused = r(m, audio, text, fusion=0.5)
    assert torch.equal(pair_only.scores, pair_only.fused(0.0))
    if mode == "exact":
        assert torch.equal(pair_only.scores, pair_only.pair)
        torch.testing.assert_close(fused.scores, pair_only.pair + 0.5 * pair_only.dual)
    else:  # rerank: shortlisted pairs fuse; the rest stay below every shortlisted pair
        sl = pair_only.shortlist
        torch.testing.assert_close(fused.scores[sl] - pair_only.scores[sl], 0.5 * pair_only.dual[sl])
    assert fused.info["fusion_lambda"] == 0.5
    m.fusion_lambda.fill_(0.25)  # fusion: null reads the model's own lambda (chosen on validation)
    assert Retriever(mode=mode, rerank_k=2)(m, audio, text).info["fusion_lambda"] == 0.25


def test_probe_counts_wins_ties_and_both_branches():
    m = model()
    audio = feats(3, 8, 24, seed=5)
    def encode_text(texts):  # each text its own fixed random features: a stable hash, not the sum of the
        # character codes, which gives a caption and its reversed rewrite (anagrams) the same features, so the
        # verdict hung on float rounding
        return SequenceFeatures.cat([feats(1, 5, 20, seed=zlib.crc32(t.encode())) for t in texts])

    m.encode_text = encode_text
    items = [ProbeItem("order", 0, "a beep, then a bell", "a bell, then a beep"),
             ProbeItem("order", 1, "a dog, then rain", "rain, then a dog"),
             ProbeItem("count", 2, "two dogs bark", "three dogs bark")]
    swapped = [ProbeItem(i.kind, i.clip, i.variant, i.true) for i in items]
    same = [ProbeItem(i.kind, i.clip, i.true, i.true) for i in items]
    a, b, tie = (run_probe(m, audio, items, fusion=0.5), run_probe(m, audio, swapped, fusion=0.5),
                 run_probe(m, audio, same))
    assert a["order"]["n"] == 2 and a["count"]["n"] == 1
    for kind in ("order", "count"):
        for branch in ("pair", "dual", "fused"):  # a win one way is a loss the other way round
            assert a[kind][branch] + b[kind][branch] == pytest.approx(1.0)
        assert tie[kind]["pair"] == tie[kind]["dual"] == 0.5 and "fused" not in tie[kind]


@pytest.mark.parametrize("caption, reversed_", [
    ("A dog barks, then a car passes.", "A car passes, then a dog barks."),
    ("A bell rings followed by a crowd cheering.", "A crowd cheering followed by a bell rings."),
    ("After a bell rings, a crowd cheers.", "After a crowd cheers, a bell rings."),
    ("Birds chirp before thunder rumbles over faint background noise.",
     "Thunder rumbles before birds chirp over faint background noise."),
    ("A dog barks while rain falls.", None),  # simultaneity: no order to reverse
    ("Rain falls.", None),
])
def test_reverse_order_by_hand(caption, reversed_):
    assert reverse_order(caption) == reversed_


def test_change_count_by_hand():
    assert change_count("A bell rings twice after a beep.", random.Random(0)) in (
        "A bell rings once after a beep.", "A bell rings three times after a beep.")
    assert change_count("Two dogs bark.", random.Random(0)) == "Three dogs bark."  # never "one dogs"
    assert change_count("A dog barks.") is None


def test_rewriting_applies_to_the_real_clotho_captions_that_state_order():
    with open(SHARED_DATA / "clotho" / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    captions = [r[f"caption_{i}"] for r in rows for i in range(1, 6)]
    counts = applicability(captions)
    assert counts["captions"] == len(rows) * 5 == 5225
    assert 0.05 < counts["order"] / counts["captions"] < 0.3  # about one caption in eight states an order
    assert 0 < counts["count"] < counts["order"]
    items = items_by_rewriting(captions[:200], [k // 5 for k in range(200)])
    assert items and all(i.true != i.variant for i in items)
    assert all(has_order_cue(i.true) for i in items if i.kind == "order")


def test_masked_padding_frames_change_no_score():
    """data.pad: zeros gives the cascade a frame mask: silence after the clip ends is not attended."""
    m = model()
    text, audio = feats(3, 5, 20, seed=6), feats(2, 8, 24, seed=7)
    mask = audio.mask.clone()
    mask[0, 5:] = False  # clip 0 is 5 frames long
    states = audio.states.clone()
    short = SequenceFeatures(states, mask, audio.pooled)
    states2 = states.clone()
    states2[0, 5:] = 100.0  # junk in the padded frames
    junk = SequenceFeatures(states2, mask, audio.pooled)
    a = m.score_grid(m.prepare_text(text), m.prepare_audio(short))
    b = m.score_grid(m.prepare_text(text), m.prepare_audio(junk))
    torch.testing.assert_close(a, b)


def test_compare_puts_the_dual_baseline_first_and_the_pair_score_beside_the_fused_one(tmp_path, capsys):
    import json

    from coattn.tools.compare import main

    dual = {"metrics": {"t2a_mAP@10": 0.5}, "ci": {"t2a_mAP@10": [0.45, 0.55]}, "extra": {"cascade": "none"}}
    co = {"metrics": {"t2a_mAP@10": 0.6}, "ci": {"t2a_mAP@10": [0.55, 0.65]},
          "extra": {"cascade": "iterating", "fusion_lambda": 0.5, "pair_metrics": {"t2a_mAP@10": 0.55},
                    "probe": {"order": {"n": 10, "pair": 0.9, "dual": 0.5}}}}
    paths = []
    for name, m in (("dual", dual), ("co", co)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(m))
    assert main([str(p) for p in paths] + ["--names", "dual", "co"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| dual | 50.0 | [45.0, 55.0]")
    assert "| 60.0 |" in lines[3] and "| 1.20 | 55.0 | 1.10 | 0.5 | 0.90 / 0.50 |" in lines[3]
    from coattn.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="absent.json: not found"):  # `coattn compare`: one line, exit 1
        main([str(tmp_path / "absent.json")])


def test_pair_training_benchmark_runs_both_modes_side_by_side():
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pair_training.py"),
                          "--width", "16", "--depth", "1",
                          "--heads", "2", "--enc-dim", "24", "--embed-dim", "8", "--batches", "6", "--steps", "1",
                          "--k", "2", "--r", "1"], capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 6 |")]
    assert len(rows) == 2 and "| B x B | 36 |" in rows[0] and "| hard K=2 R=1 | 48 |" in rows[1], out
    assert "load average before" in out and "load average after" in out
