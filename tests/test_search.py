"""`coattn search` (index once, incremental, ranked output), `coattn predict`, `coattn test` in
rerank mode: end to end on a checkpoint trained for two steps on the tiny synthetic set."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from coattn.model import CoAttnModel
from coattn.tools import search as S
from coattn.cli import main
from tests.conftest import SHARED_DATA
from tests.test_cli import tiny_args

REAL_CLIPS = SHARED_DATA / "clotho" / "audio_sample"


def run_search(capsys, ckpt, audio_dir, index_dir, *extra) -> dict:
    capsys.readouterr()
    rc = S.main(["a beep then a dog bark", "--ckpt_path", str(ckpt), "--audio-dir", str(audio_dir),
                 "--index-dir", str(index_dir), "--json", *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def check_ranked(out: dict, n_files: int, top_k: int) -> list[str]:
    results = out["queries"][0]["results"]
    assert len(results) == min(top_k, n_files)
    assert [r[0] for r in results] == list(range(1, len(results) + 1))
    scores = [r[1] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)
    return [r[2] for r in results]


@pytest.mark.slow
def test_search_folder_index_reuse_and_incremental(demo_run, tiny_clotho, tmp_path, capsys):
    _, ckpt = demo_run
    folder = tmp_path / "sounds"
    (folder / "sub dir").mkdir(parents=True)
    wavs = sorted((tiny_clotho / "evaluation").glob("*.wav"))
    for w in wavs[:3]:
        shutil.copy(w, folder / w.name)
    shutil.copy(wavs[3], folder / "sub dir" / "a clip with spaces.wav")
    (folder / "notes.txt").write_text("not audio")
    index = tmp_path / "index"

    first = run_search(capsys, ckpt, folder, index, "--top-k", "3")
    assert first["index"]["encoded"] == 4 and first["index"]["reused"] == 0
    check_ranked(first, 4, 3)
    second = run_search(capsys, ckpt, folder, index, "--top-k", "10")
    assert second["index"]["encoded"] == 0 and second["index"]["reused"] == 4  # no re-encoding
    names = check_ranked(second, 4, 10)
    assert "sub dir/a clip with spaces.wav" in names
    # rerank with K >= M ranks exactly as the exact mode
    exact = run_search(capsys, ckpt, folder, index, "--mode", "exact")
    assert [r[2] for r in exact["queries"][0]["results"]] == names
    np.testing.assert_allclose([r[1] for r in exact["queries"][0]["results"]],
                               [r[1] for r in second["queries"][0]["results"]], atol=1e-5)

    shutil.copy(wavs[0], folder / "added.flac.wav")  # a new file: only it is encoded
    (folder / wavs[1].name).unlink()  # a removed one is forgotten
    third = run_search(capsys, ckpt, folder, index)
    assert third["index"] == {**third["index"], "encoded": 1, "reused": 3, "removed": 1}
    names = check_ranked(third, 4, 10)
    assert "added.flac.wav" in names and wavs[1].name not in names
    shards = list((index).glob("*/shard-*.keys.json"))
    assert len(shards) == 2  # the first shard still holds live clips, the second the added one

    # a shortlist shorter than the folder: K clips re-scored, the cascade's order
    short = run_search(capsys, ckpt, folder, index, "--rerank-k", "2", "--top-k", "2")
    assert short["queries"][0]["cascade_passes"] == 2
    check_ranked(short, 4, 2)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CLIPS.is_dir(), reason="the 7 real Clotho clips are not available")
def test_search_real_clotho_clips(demo_run, tmp_path, capsys):
    _, ckpt = demo_run
    index = tmp_path / "index"
    out = run_search(capsys, ckpt, REAL_CLIPS, index)
    assert out["index"]["files"] == 7 and out["index"]["encoded"] == 7
    names = check_ranked(out, 7, 10)
    assert "01 A pug struggles to breathe 1_14_2008.wav" in names
    again = run_search(capsys, ckpt, REAL_CLIPS, index, "--top-k", "3")
    assert again["index"]["encoded"] == 0 and again["index"]["reused"] == 7
    # plain text output
    capsys.readouterr()
    assert S.main(["dog", "--ckpt_path", str(ckpt), "--audio-dir", str(REAL_CLIPS), "--index-dir", str(index),
                   "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "   1  " in printed and "   2  " in printed and "rerank K=64" in printed


@pytest.mark.slow
def test_checkpoint_loads_weights_only(demo_run):
    _, ckpt = demo_run
    torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled objects in it
    model = CoAttnModel.from_checkpoint(ckpt)
    assert not model.training and model.cascade.kind == "iterating"


@pytest.mark.slow
def test_test_in_rerank_mode_and_predict(demo_run, tiny_clotho, monkeypatch, capsys):
    run, ckpt = demo_run
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main(["test", *tiny_args(tiny_clotho), f"--ckpt_path={ckpt}", "--model.evaluation.mode=rerank",
                 "--model.evaluation.rerank_k=2"]) == 0
    assert "retrieval: rerank, K=2" in capsys.readouterr().out
    metrics = json.loads((run / "runs/demo_scratch/results/test/metrics.json").read_text())
    extra = json.dumps(metrics)
    assert '"retrieval_mode": "rerank"' in extra and '"rerank_k": 2' in extra
    assert '"cascade_passes_exact": 80' in extra  # 20 captions x 4 clips

    assert main(["predict", *tiny_args(tiny_clotho), f"--ckpt_path={ckpt}"]) == 0
    z = np.load(run / "runs/demo_scratch/results/predict/embeddings.npz")
    assert z["clip_embeddings"].shape[0] == 4 and z["caption_embeddings"].shape[0] == 20
    assert len(z["fnames"]) == 4 and len(z["captions"]) == 20 and z["caption_clip"].max() == 3
    np.testing.assert_allclose(np.linalg.norm(z["clip_embeddings"], axis=1), 1, atol=1e-5)
    f = np.load(run / "runs/demo_scratch/results/predict/features.npz")
    assert f["clip_states"].shape[:2] == (4, 32) and f["caption_states"].shape[0] == 20
