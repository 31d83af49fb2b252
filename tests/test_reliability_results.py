"""Inputs checked at start-up, results never lost or overwritten without a word (issue 22, findings 1, 5, 7,
8, 9): relevance files read before any scoring, the feature cache folder probed, a second `coattn test`
refused over another checkpoint's results, a full disk / size limit while saving a checkpoint."""
from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess

import pytest

from coattn.cli import main
from coattn.errors import DataError
from coattn.relevance import read_relevance
from tests.reliability_helpers import coattn_cmd, subprocess_env, tiny_fit_args
from tests.test_bad_inputs import iterating_state  # noqa: F401 (a fixture: the tiny model's checkpoint contents)
from tests.test_reliability_startup import _unwritable, model_ckpt, one_error_line  # noqa: F401 (fixtures)


def _eval_rows(root) -> list[tuple[str, str]]:
    """(caption, file name) of the tiny evaluation split, in file order."""
    with open(root / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        return [(row["caption_1"], row["file_name"]) for row in csv.DictReader(f)]


def _relevance_file(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["query", "audio_filenames"])
        for caption, clip in rows:
            w.writerow([caption, repr([clip])])
    return str(path)


def _test_args(root, ckpt, *extra) -> list[str]:
    return ["test", *tiny_fit_args(root), "--model.evaluation.bootstrap=0", "--ckpt_path", str(ckpt), *extra]


# ---- 1. a relevance file is read at set-up, before any pair is scored ----------------------------------
def test_bad_relevance_file_is_refused_before_scoring(model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    from coattn.train.module import CoAttnRetrieval

    rows = _eval_rows(tiny_clotho)
    rel = _relevance_file(tmp_path / "rel.csv", [rows[0], (rows[1][0], "no_such_clip.wav")])

    def scored(*args, **kwargs):
        raise AssertionError("the split was scored before the relevance file was checked")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CoAttnRetrieval, "_evaluate", scored)
    rel_arg = f"--data.init_args.relevance_files={{test: {rel}}}"
    line = one_error_line(capsys, _test_args(tiny_clotho, model_ckpt, rel_arg))
    assert line.startswith(f"{rel}: line 3: clip 'no_such_clip.wav'"), line


@pytest.mark.slow
def test_a_late_relevance_failure_keeps_the_scores(model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    """Should the relevance step still fail after scoring, the scores and metrics are written first."""
    import coattn.relevance

    rel = _relevance_file(tmp_path / "rel.csv", _eval_rows(tiny_clotho)[:2])

    def late(scores, captions, fnames, path, *args, **kwargs):
        raise DataError(f"{path}: vanished")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(coattn.relevance, "multi_relevance_metrics", late)
    rel_arg = f"--data.init_args.relevance_files={{test: {rel}}}"
    line = one_error_line(capsys, _test_args(tiny_clotho, model_ckpt, rel_arg))
    out = tmp_path / "runs/demo_scratch/results/test"
    assert line.startswith(f"{rel}: vanished (the other results are written to {out.relative_to(tmp_path)})"), line
    assert (out / "metrics.json").is_file() and (out / "scores.npz").is_file()


# ---- 8. repeated rows and NaN / inf in relevance files ---------------------------------------------------
BAD_RELEVANCE = {
    "repeated_query": ("query,audio_filenames\na dog,\"['a.wav']\"\na cat,\"['b.wav']\"\na dog,\"['c.wav']\"\n",
                       "line 4: query 'a dog' repeats line 2"),
    "repeated_pair": ("caption,file_name,relevance\na dog,a.wav,1\na dog,b.wav,0\na dog,a.wav,1\n",
                      "line 4: query 'a dog' with clip 'a.wav' repeats line 2"),
    "nan": ("caption,file_name,relevance\na dog,a.wav,1\na dog,b.wav,nan\n", "line 3: relevance 'nan' is not a finite"),
    "inf": ("caption,file_name,relevance\na dog,a.wav,inf\n", "line 2: relevance 'inf' is not a finite"),
}


@pytest.mark.parametrize("case", list(BAD_RELEVANCE))
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_relevance_file_with_repeated_rows_or_nan_is_refused(case, threshold, tmp_path):
    text, message = BAD_RELEVANCE[case]
    path = tmp_path / "rel.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_relevance(path, threshold)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


# ---- 7. the feature cache folder is an output folder ----------------------------------------------------
@pytest.mark.parametrize("kind", ["under_a_file", "read_only"])
def test_feature_cache_folder_that_cannot_be_written(kind, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _unwritable(tmp_path, kind)
    line = one_error_line(capsys, ["fit", *tiny_fit_args(tiny_clotho), f"--model.feature_cache={folder}"])
    assert line.startswith(f"model.feature_cache: cannot write to '{folder}'"), line


# ---- 9. a second `coattn test` never replaces another checkpoint's results silently -----------------------
@pytest.mark.slow
def test_a_second_test_of_another_checkpoint_is_refused(model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "runs/demo_scratch/results/test"
    capsys.readouterr()
    assert main(_test_args(tiny_clotho, model_ckpt)) == 0
    first = (results / "metrics.json").read_text()
    other = tmp_path / "other.ckpt"
    shutil.copy(model_ckpt, other)
    line = one_error_line(capsys, _test_args(tiny_clotho, other))
    assert line.startswith(f"runs/demo_scratch/results/test holds the results of an earlier test (metrics.json, "
                           f"checkpoint {model_ckpt}): pass --overwrite true to replace them"), line
    assert (results / "metrics.json").read_text() == first
    # the same checkpoint again (a second `make demo`): replaced, and said
    assert main(_test_args(tiny_clotho, model_ckpt)) == 0
    assert "coattn: replacing the results of an earlier test of the same checkpoint" in capsys.readouterr().err
    assert main(_test_args(tiny_clotho, other, "--overwrite", "true")) == 0
    assert json.loads((results / "metrics.json").read_text())["extra"]["ckpt_path"] == str(other)


# ---- 5. a full disk or a file size limit while saving a checkpoint ---------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that write() fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_file_size_limit_while_saving_a_checkpoint_is_one_line(tiny_clotho, tmp_path):
    args = [*coattn_cmd(), "fit", *tiny_fit_args(tiny_clotho)]
    first = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "runs/demo_scratch/checkpoints/last.ckpt"
    before = last.read_bytes()
    limit = len(before) // 2  # every log and config file fits; a checkpoint does not
    proc = subprocess.run([*coattn_cmd(), "fit", *tiny_fit_args(tiny_clotho, epochs=2), "--ckpt_path", "last"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(limit))
    errors = [x for x in proc.stderr.splitlines() if x.startswith("coattn: error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "inline_container" not in proc.stderr, \
        proc.stderr[-3000:]
    assert len(errors) == 1 and "runs/demo_scratch/checkpoints/" in errors[0] and \
        "File too large (the file size limit (ulimit -f) is reached); the previous file is kept" in errors[0], errors
    assert last.read_bytes() == before
    assert not [f for f in os.listdir(last.parent) if f.endswith(".partial")]
