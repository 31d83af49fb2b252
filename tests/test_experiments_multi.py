"""The multi-dataset and cross-dataset experiment files: parse, instantiate, train a few steps and test on
small trees in the real formats (aac-datasets layout, as the files expect), with DCASE 2025 relevance."""
from __future__ import annotations

import csv
import json

import pytest

from coattn.cli import main
from tests.conftest import REPO
from tests.data_trees import make_audiocaps, make_clotho, make_wavcaps
from tests.test_experiments import TINY, instantiate

MULTI = REPO / "experiments" / "multi" / "clotho_audiocaps_wavcaps_iterating.yaml"
CROSS = REPO / "experiments" / "multi" / "train_clotho_test_audiocaps.yaml"
# Seconds instead of hours: tiny batches, 2 steps, fp32 on the CPU, no W&B run.
SMALL = ["--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4", "--data.init_args.num_workers=0",
         "--data.init_args.pin_memory=false", "--data.init_args.persistent_workers=false",
         "--data.init_args.steps_per_epoch=2", "--trainer.max_epochs=1", "--trainer.precision=32-true",
         "--trainer.accelerator=cpu", "--trainer.devices=1", "--model.evaluation.bootstrap=20",
         "--model.evaluation.precision=fp32"]


def make_data(root):
    """data/ as an aac-datasets root with all three datasets, plus the DCASE exclusion list the file names."""
    clotho = make_clotho(root / "data", layout="aac-datasets")
    ac = make_audiocaps(root / "data", layout="aac-datasets")
    make_wavcaps(root / "data", {"FreeSound": ["1000", "3001", "77", "78"], "AudioSet_SL": [f"Y{ac['train'][0]}.wav"],
                                 "BBC_Sound_Effects": ["07045061"], "SoundBible": ["2219"]}, layout="aac-datasets")
    (root / "resources").mkdir()
    (root / "resources" / "dcase2025_task6_excluded_freesound_ids.csv").write_text("sound_id\n78\nNot found\n")
    return clotho, ac


def test_multi_and_cross_dataset_files_instantiate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path)
    cli = instantiate(MULTI, extra=TINY)
    dm = cli.datamodule
    assert type(dm).__name__ == "MultiDataModule" and dm.weights == {"clotho": 0.4, "audiocaps": 0.3, "wavcaps": 0.3}
    assert {n: type(d).__name__ for n, d in dm.datasets.items()} == {
        "clotho": "ClothoDataModule", "audiocaps": "AudioCapsDataModule", "wavcaps": "WavCapsDataModule"}
    assert [d.layout for d in dm.datasets.values()] == ["aac-datasets"] * 3
    assert dm.steps_per_epoch == 2000 and dm.val == ["clotho", "audiocaps"] and dm.exclude_eval_overlap
    assert cli.trainer.checkpoint_callback.monitor == "val/clotho/t2a_mAP@10"
    assert cli.model.model.cascade.kind == "iterating" and cli.model.model.cascade.depth == 5
    cross = instantiate(CROSS, extra=TINY).datamodule
    assert (cross.train, cross.val, cross.test) == (["clotho"], ["clotho"], ["audiocaps", "clotho"])


@pytest.mark.slow
def test_multi_experiment_trains_and_tests_on_real_format_trees(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    clotho, _ = make_data(tmp_path)
    args = ["--config", str(MULTI), *TINY, *SMALL]
    assert main(["fit", *args, "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                 "--trainer.logger.init_args.save_dir=runs/clotho_audiocaps_wavcaps_iterating"]) == 0
    run = tmp_path / "runs" / "clotho_audiocaps_wavcaps_iterating"
    logged = list(csv.DictReader(open(next(run.rglob("metrics.csv")))))
    columns = set(logged[0])
    assert {"val/clotho/t2a_mAP@10", "val/audiocaps/t2a_mAP@10", "val/clotho/a2t_R@1"} <= columns
    assert not any(c.startswith("val/t2a") for c in columns)
    assert (run / "checkpoints" / "best.ckpt").is_file()  # chosen on val/clotho/t2a_mAP@10
    # DCASE 2025 protocol on Clotho's test split: two queries with several relevant clips
    test_caps = [f"clotho evaluation clip {i} caption 1" for i in range(3)]
    names = [c[0] for c in clotho["test"]]
    rel = tmp_path / "metadata_eval.csv"
    with open(rel, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("query", "audio_filenames"), (test_caps[0], str(names[:2])),
                                 (test_caps[2], str([names[2], names[0]]))])
    capsys.readouterr()
    assert main(["test", *args, f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "--trainer.logger=false",
                 f"--data.init_args.datasets.clotho.init_args.relevance_files={{test: {rel}}}"]) == 0
    printed = capsys.readouterr().out
    assert "DCASE 2025 multi-relevance (2 queries" in printed and "mAP@16" in printed
    for name, n_clips in (("clotho", 3), ("audiocaps", 3)):
        out = run / "results" / "test" / name
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["counts"]["n_clips"] == n_clips
        header = (out / "submission_dcase2025.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("index,") and (out / "submission_t2a.csv").is_file()
    multi = json.loads((run / "results/test/clotho/metrics.json").read_text())["extra"]["multi_relevance"]
    assert multi["metrics"]["multi_queries"] == 2 and 0 <= multi["metrics"]["multi_mAP@16"] <= 1
    # a relevance file naming a clip the split does not have: one line naming the file, line and clip
    rel.write_text(f'query,audio_filenames\n{test_caps[1]},"[\'{names[1]}\', \'gone.wav\']"\n', encoding="utf-8")
    assert main(["test", *args, f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "--trainer.logger=false",
                 f"--data.init_args.datasets.clotho.init_args.relevance_files={{test: {rel}}}"]) == 1
    assert_one_line_error(capsys.readouterr().err, f"{rel}: line 2: clip 'gone.wav' (query '{test_caps[1]}')")


@pytest.mark.slow
def test_bad_new_format_inputs_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path)
    fsd = tmp_path / "data/WavCaps/json_files/FreeSound/fsd_final.json"
    doc = json.loads(fsd.read_text())
    del doc["data"][1]["caption"]
    fsd.write_text(json.dumps(doc))
    assert main(["fit", "--config", str(MULTI), *TINY, *SMALL, "--trainer.logger=false"]) == 1
    assert_one_line_error(capsys.readouterr().err, "fsd_final.json: entry 2 (id '3001') lacks field(s) ['caption']")


def assert_one_line_error(err: str, expected: str) -> None:
    """``coattn: error: <message>`` on one line, no traceback (Lightning's own warnings may precede it)."""
    lines = [line for line in err.splitlines() if line.startswith("coattn: error: ")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err[-2000:]
