"""DCASE 2025 multi-relevance metrics: hand-computed cases, the official code's logic, the file formats."""
from __future__ import annotations

import ast
import csv

import numpy as np
import pytest
import torch

from coattn.errors import ConfigError, DataError
from coattn.relevance import match_relevance, multi_relevance_metrics, per_query_multi_metrics, read_relevance
from coattn.results import write_submission_2025
from data_modules.clotho import read_clotho_csv
from tests.conftest import SHARED_DATA

# Lines 1-5 (header, rows 2-5) of resources/metadata_eval.csv (CPJKU/dcase2025_task6_baseline @ c78422fc), verbatim.
OFFICIAL_EXCERPT = (
    'query,audio_filenames\n'
    '"A Bicycle rides past people walking, while birds are singing.","[\'bird_in_rain.wav\', '
    '\'woodsbirds.wav\', \'Stream Honiton.wav\', \'bridge.wav\']"\n'
    '"A FAST MOVING BODY OF WATER, LITTLE SPLASHES, '
    'THEN MORE FAST MOVING WATER","[\'Sepang Beach 04.wav\', \'20091217.17.fountain.wav\', '
    "'WavesOnTheShore.wav', 'Gentle Waves Peeling Left To Right 2.wav', 'water_stream2.wav', "
    '\'043015 Splashing water in bathtub.wav\', \'at the westcoast.wav\', \'Water_Lapping_River.wav\']"\n'
    'A UFO sound is being made from a video game.,"[\'SYnth_NoisesAX8.wav\', '
    '\'Reel-to-Reel Tape On Fast Forward.wav\']"\n'
    'A babbling brook full of water is gushing past.,"[\'water_flows_through_crack_in_rocks.wav\', '
    '\'Pensol - le Moulin cours d&#39;eau.wav\', \'Small watetfall.wav\']"\n'
)


def official_multi_map(C: torch.Tensor, captions: np.ndarray, paths: np.ndarray, rows: list[tuple[str, str]],
                       k: int) -> float:
    """The official metric, transcribed from CPJKU/dcase2025_task6_baseline, d25_t6/retrieval_module.py
    (commit c78422fcbed579877919620a30075baccf82bf2b), on_validation_epoch_end, lines 219-245: the same
    operations with a list of (query, audio_filenames) rows in place of the pandas frame."""
    def get_ranks(c, r):
        ranks = [i.item() for i in torch.argsort(torch.argsort(-c))[r]]
        return ranks

    def average_precision_at_k(relevant_ranks, k=10):
        relevant_ranks = sorted(relevant_ranks)
        ap = 0.0
        for i, rank in enumerate(relevant_ranks, start=1):
            if rank >= k:
                break
            ap += i / (rank + 1)  # precision at threshold
        return ap / len(relevant_ranks)  # Normalize by total number of relevant items

    aps = []
    for query, audio_filenames in rows:
        audio_filenames = ast.literal_eval(audio_filenames)
        query_index = captions.tolist().index(query)
        new_audio_indices = [paths.tolist().index(y) for y in audio_filenames]
        aps.append(average_precision_at_k(get_ranks(C[query_index], new_audio_indices), k))
    return float(np.mean(aps))


def metrics_for(scores, relevant_lists, rows=None):
    rows = torch.tensor(rows if rows is not None else range(len(relevant_lists)))
    width = max(len(x) for x in relevant_lists)
    rel = torch.tensor([x + [-1] * (width - len(x)) for x in relevant_lists])
    return {k: float(v.mean()) for k, v in per_query_multi_metrics(scores, rows, rel).items()}


def test_hand_computed_cases():
    # clips ranked c0, c2, c4, c3, c5, c1 (0-based ranks 0..5); relevant c2 (rank 1) and c3 (rank 3)
    s = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2]])
    m = metrics_for(s, [[3, 2]])
    assert m["multi_mAP@16"] == pytest.approx((1 / 2 + 2 / 4) / 2)  # P@2 = 1/2, P@4 = 2/4, over |R| = 2
    assert m["multi_R@1"] == 0 and m["multi_R@5"] == 1
    # 20 relevant clips at ranks 0..19 of 30: AP@16 = 16 hits of precision 1 over |R| = 20 (not min(|R|, 16))
    s = torch.arange(30, 0, -1).float()[None]
    m = metrics_for(s, [list(range(20))])
    assert m["multi_mAP@16"] == pytest.approx(16 / 20) and m["multi_mAP@10"] == pytest.approx(10 / 20)
    # a single relevant clip at rank 16 (the 17th) is outside mAP@16, inside nothing
    m = metrics_for(s, [[16]])
    assert m["multi_mAP@16"] == 0 and m["multi_R@10"] == 0
    # one relevant clip at rank r: AP = 1/(r+1), the one-relevant-clip DCASE definition
    m = metrics_for(s, [[4]])
    assert m["multi_mAP@10"] == pytest.approx(1 / 5) and m["multi_R@5"] == 1
    # ties: all equal scores rank by clip index (coattn's rule), so clip 3 has rank 3
    m = metrics_for(torch.zeros(1, 8), [[3]])
    assert m["multi_mAP@16"] == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_official_code_on_the_same_inputs(tmp_path, seed):
    """Random tie-free scores, repeated captions (first occurrence wins), 1-20 relevant clips per query."""
    g = torch.Generator().manual_seed(seed)
    n_clips = 40
    paths = np.array([f"clip {j}.wav" for j in range(n_clips)])
    captions = np.array([f"caption {i % 90}" for i in range(100)])  # 10 texts occur twice
    C = torch.randn(len(captions), n_clips, generator=g, dtype=torch.float64)
    queries = torch.randperm(90, generator=g)[:30].tolist()
    rows = []
    for q in queries:
        n_rel = int(torch.randint(1, 21, (1,), generator=g))
        rel = torch.randperm(n_clips, generator=g)[:n_rel].tolist()
        rows.append((f"caption {q}", str([str(paths[j]) for j in rel])))
    path = tmp_path / "metadata_eval.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("query", "audio_filenames"), *rows])
    ours, per_query = multi_relevance_metrics(C, list(captions), list(paths), path)
    assert ours["multi_queries"] == 30 and per_query["multi_mAP@16"].shape == (30,)
    for k in (16, 10):
        assert ours[f"multi_mAP@{k}"] == pytest.approx(official_multi_map(C, captions, paths, rows, k), abs=1e-12)


def test_official_excerpt_matches_the_real_clotho_evaluation_split(tmp_path):
    if not (SHARED_DATA / "clotho").is_dir():
        pytest.skip("the real Clotho caption files are not here")
    rows = read_clotho_csv(SHARED_DATA / "clotho" / "clotho_captions_evaluation.csv")
    fnames = [r[0] for r in rows]
    captions = [c for r in rows for c in r[1]]
    path = tmp_path / "metadata_eval.csv"
    path.write_text(OFFICIAL_EXCERPT, encoding="utf-8")
    queries = read_relevance(path)
    assert [len(q.clips) for q in queries] == [4, 8, 2, 3]
    assert queries[3].clips[1] == "Pensol - le Moulin cours d&#39;eau.wav"  # HTML-escaped, as in the CSV
    query_rows, relevant = match_relevance(queries, captions, fnames, path)
    assert [captions[i] for i in query_rows] == [q.query for q in queries]
    assert [[fnames[j] for j in r if j >= 0] for r in relevant.tolist()] == [q.clips for q in queries]


def test_graded_files_and_threshold(tmp_path):
    path = tmp_path / "graded.csv"
    path.write_text("caption,file_name,relevance\nq1,a.wav,90\nq1,b.wav,40\nq2,b.wav,10\nq1,c.wav,75\n")
    with pytest.raises(ConfigError, match="relevance_threshold"):
        read_relevance(path)
    queries = read_relevance(path, threshold=50)
    assert [(q.query, q.clips, q.line) for q in queries] == [("q1", ["a.wav", "c.wav"], 5)]  # q2: nothing relevant
    binary = tmp_path / "binary.csv"
    binary.write_text("query,file_name,relevance\nq1,a.wav,1\nq1,b.wav,0\n")
    assert [q.clips for q in read_relevance(binary)] == [["a.wav"]]


@pytest.mark.parametrize("text, message", [
    ("query,audio_filenames\nq1,\"['a.wav', 'zzz.wav']\"\n", r"line 2: clip 'zzz.wav' \(query 'q1'\) is not a clip"),
    ("query,audio_filenames\nnot a caption,\"['a.wav']\"\n", r"line 2: query 'not a caption' is not a caption"),
    ("query,audio_filenames\nq1,a.wav\n", r"line 2: audio_filenames must be a non-empty list"),
    ("query,audio_filenames\nq1,\"['a.wav', 'a.wav']\"\n", "lists a clip twice"),
    ("caption,file_name,relevance\nq1,a.wav,high\n", r"line 2: relevance 'high' is not a number"),
    ("text,clip\nq1,a.wav\n", r"row 1 \(header\)"),
])
def test_bad_relevance_files_name_the_file_and_entry(tmp_path, text, message):
    path = tmp_path / "rel.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        multi_relevance_metrics(torch.randn(2, 2), ["q1", "q2"], ["a.wav", "b.wav"], path)
    assert str(path) in str(err.value)


def test_submission_2025_file(tmp_path):
    scores = torch.tensor([[0.5, -1.25], [0.1234567, 3e-8], [0.5, -1.25]], dtype=torch.float32)
    out = write_submission_2025(tmp_path / "s.csv", scores, ["a dog, barking", "rain", "a dog, barking"],
                                ["x 1.wav", "y.wav"])
    rows = list(csv.reader(open(out, encoding="utf-8")))
    assert rows[0] == ["index", "x 1.wav", "y.wav"]  # the baseline's predict.py: index + one column per clip
    assert [r[0] for r in rows[1:]] == ["a dog, barking", "rain"]  # one row per distinct query
    assert np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float32).tolist() == scores[:2].tolist()
