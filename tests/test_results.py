"""Result files: round trip, DCASE submission format, atomic writes, the printed table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from coattn import metrics as M
from coattn import results as R


def _run(tmp_path, n_clips=12, per_clip=2, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    cc = torch.arange(n_clips).repeat_interleave(per_clip)
    scores = torch.randint(0, 5, (len(cc), n_clips), generator=g).float()  # ties on purpose
    captions = [f'a dog, "barking" {i}' for i in range(len(cc))]  # comma + quotes need quoting
    clips = [f"clip_{j:03d}.wav" for j in range(n_clips)]
    pq = M.per_query_metrics(scores, cc)
    metrics, ci, chance = M.aggregate(pq), M.bootstrap_ci(pq, n_boot=200), M.chance_metrics(cc)
    paths = R.write_results(tmp_path, scores, cc, captions, clips, metrics, ci, chance, **kw)
    return paths, scores, cc, captions, clips, metrics


def test_round_trip_and_metrics_json(tmp_path):
    paths, scores, cc, captions, clips, metrics = _run(tmp_path, extra={"ckpt": tmp_path / "x.ckpt"})
    assert R.recompute_from_npz(paths["scores"]) == metrics
    with np.load(paths["scores"], allow_pickle=False) as z:  # no pickled objects inside
        assert z["scores"].dtype == np.float32 and z["scores"].shape == (24, 12)
        assert z["captions"].tolist() == captions and z["clip_names"].tolist() == clips
        assert z["caption_clip"].tolist() == cc.tolist()
    report = json.loads(paths["metrics"].read_text())
    assert report["metrics"] == metrics
    assert report["counts"]["n_captions"] == 24 and report["counts"]["n_clips"] == 12
    assert report["tie_rule"] == M.TIE_RULE
    assert report["extra"]["ckpt"] == str(tmp_path / "x.ckpt")
    assert set(report["ci"]) == set(metrics) and set(report["chance"]) == set(metrics)


def test_submission_file(tmp_path):
    paths, scores, cc, captions, clips, _ = _run(tmp_path)
    with open(paths["submission"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["caption"] + [f"fname_{i}" for i in range(1, 11)]
    assert len(rows) == 1 + len(captions)
    ranks = M.text_to_audio_ranks(scores, cc)
    for i, row in enumerate(rows[1:]):
        assert row[0] == captions[i]  # quoting round-trips
        # Same order as the ranks (tie rule included): the true clip sits at its rank.
        s = scores[i]
        expect = sorted(range(12), key=lambda j: (-s[j].item(), j))[:10]
        assert row[1:] == [clips[j] for j in expect]
        if ranks[i] <= 10:
            assert row[int(ranks[i])] == clips[int(cc[i])]


def test_submission_with_fewer_than_ten_clips(tmp_path):
    paths, *_ = _run(tmp_path, n_clips=4)
    rows = list(csv.reader(open(paths["submission"], newline="", encoding="utf-8")))
    assert rows[0] == ["caption", "fname_1", "fname_2", "fname_3", "fname_4"]
    assert all(len(r) == 5 for r in rows)


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    _run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "scores.npz", "submission_t2a.csv"]
    # A failure mid-write keeps the previous file intact and leaves no temp file.
    before = (tmp_path / "scores.npz").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        _run(tmp_path, seed=1)
    assert (tmp_path / "scores.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "scores.npz", "submission_t2a.csv"]


def test_nan_scores_raise(tmp_path):
    s = torch.zeros(2, 2)
    s[0, 0] = float("nan")
    with pytest.raises(ValueError):
        R.write_results(tmp_path, s, torch.tensor([0, 1]), ["a", "b"], ["x", "y"], {}, {}, {})


def test_format_table(tmp_path):
    g = torch.Generator().manual_seed(0)
    cc = torch.arange(100).repeat_interleave(5)
    pq = M.per_query_metrics(torch.rand(500, 100, generator=g), cc)
    metrics, chance = M.aggregate(pq), M.chance_metrics(cc)
    table = R.format_table(metrics, chance, M.bootstrap_ci(pq, n_boot=100))
    lines = table.splitlines()
    assert lines[0].split() == ["mAP@10", "R@1", "R@5", "R@10"]
    assert lines[1].startswith("t2a") and f"{100 * metrics['t2a_R@1']:.2f} (chance 1.00)" in lines[1]
    assert lines[2].lstrip().startswith("CI [") and lines[3].startswith("a2t")
    assert "medR" in table
    assert "CI" not in R.format_table(metrics, chance).replace("values in %", "")
