"""Twin and other queries reported apart: the queries where only *when* things happen decides the ranking."""
import json

import torch

from coattn.metrics import aggregate, per_query_metrics
from coattn.probe import format_subsets, subset_metrics, twin_clips


def test_twin_clips_reads_the_metadata_and_says_none_without_twins(tmp_path):
    meta = {"evaluation/a.wav": {"twin": "evaluation/b.wav"}, "evaluation/b.wav": {"twin": "evaluation/a.wav"},
            "evaluation/c.wav": {"twin": None}}
    path = tmp_path / "synth_metadata.json"
    path.write_text(json.dumps(meta))
    assert twin_clips(path, "evaluation", ["c.wav", "a.wav", "b.wav"]).tolist() == [False, True, True]
    path.write_text(json.dumps({"evaluation/a.wav": {"events": []}}))  # the synthetic demo's metadata: no twins
    assert twin_clips(path, "evaluation", ["a.wav"]) is None


def test_subset_metrics_average_the_queries_of_each_group_ranked_among_all_clips():
    # 3 clips, 2 captions each; clips 0 and 1 are twins: the score cannot tell them apart for caption 0
    scores = torch.tensor([[0.9, 0.95, 0.1], [0.9, 0.2, 0.1],    # clip 0's captions: rank 2, rank 1
                           [0.1, 0.9, 0.2], [0.3, 0.8, 0.1],    # clip 1's: rank 1, rank 1
                           [0.1, 0.2, 0.9], [0.95, 0.2, 0.9]])  # clip 2's: rank 1, rank 2
    caption_clip = torch.tensor([0, 0, 1, 1, 2, 2])
    pq = per_query_metrics(scores, caption_clip)
    twins = torch.tensor([True, True, False])
    out = subset_metrics(pq, caption_clip, {"twin": twins, "other": ~twins})
    assert out["twin"]["n"] == 4 and out["other"]["n"] == 2
    assert abs(out["twin"]["t2a_mAP@10"] - (0.5 + 1 + 1 + 1) / 4) < 1e-12
    assert abs(out["other"]["t2a_mAP@10"] - (1 + 0.5) / 2) < 1e-12
    assert out["twin"]["t2a_R@1"] == 0.75
    # the groups partition the queries: their weighted mean is the whole split's
    whole = aggregate(pq)["t2a_mAP@10"]
    assert abs((4 * out["twin"]["t2a_mAP@10"] + 2 * out["other"]["t2a_mAP@10"]) / 6 - whole) < 1e-12
    line = format_subsets({"fused": out, "dual": out})
    assert line.startswith("twin queries (n=4): t2a mAP@10 fused 87.5, dual 87.5 | other queries (n=2)")


def test_compare_shows_twin_and_other_queries_and_the_count_probe(tmp_path, capsys):
    from coattn.tools.compare import main

    sub = {"twin": {"n": 4, "t2a_mAP@10": 0.62}, "other": {"n": 6, "t2a_mAP@10": 0.99}}
    dual = {"metrics": {"t2a_mAP@10": 0.8}, "extra": {"cascade": "none", "subsets": {"dual": sub},
                                                      "probe": {"count": {"n": 3, "dual": 0.5}}}}
    path = tmp_path / "dual.json"
    path.write_text(json.dumps(dual))
    assert main([str(path), "--names", "dual"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| count probe pair / dual | twin queries | other queries |")
    assert lines[2].endswith("| - | - / 0.50 | 62.0 | 99.0 |")
