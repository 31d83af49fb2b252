"""Start-up errors a person can read: one line naming the key, file or folder, before any work is done
(issue 11, items 3, 7, 8, 9, 11, 12). ``COATTN_DEBUG=1`` still gives the traceback."""
from __future__ import annotations

import os

import pytest

from coattn.cli import main
from tests.reliability_helpers import tiny_fit_args
from tests.test_bad_inputs import iterating_state  # noqa: F401 (a fixture: the tiny model's checkpoint contents)


def one_error_line(capsys, argv: list[str], rc: int = 1) -> str:
    """Run ``coattn <argv>``; it must exit ``rc`` with one ``coattn: error:`` line and no traceback."""
    capsys.readouterr()
    assert main(argv) == rc
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("coattn: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0][len("coattn: error: "):]


# ---- 8. a class refusing its setting names the key ------------------------------------------------
SETTINGS = {
    "negative_batch": (["--data.init_args.batch_size=-1"], "data.init_args.batch_size: batch_size must be >= 1"),
    "eval_batch_0": (["--data.init_args.eval_batch_size=0"], "data.init_args.eval_batch_size: eval_batch_size must"),
    "negative_workers": (["--data.init_args.num_workers=-1"], "data.init_args.num_workers: num_workers must be >= 0"),
    "depth_0": (["--model.cascade.init_args.depth=0"], "model.cascade.init_args.depth: cascade depth must be >= 1"),
    "width_heads": (["--model.cascade.init_args.width=63"], "model.cascade.init_args.width, "
                                                             "model.cascade.init_args.heads: cascade width 63 is not"),
    "temperature_0": (["--model.temperature=0"], "model.temperature: temperature must be in (0, 1], got 0.0"),
    "dropout_1.5": (["--model.cascade.init_args.dropout=1.5"], "model.cascade.init_args.dropout: dropout probability"),
    "audio_window": (["--data.init_args.clip_seconds=5"], "data.init_args.sample_rate=48000, clip_seconds=5.0 "
                     "(240000 samples) but model.audio_encoder (ClapAudioEncoder) takes 48000 Hz windows of 480000 "
                     "samples: set data.init_args.sample_rate: 48000 and data.init_args.clip_seconds: 10"),
    "hf_id_offline": (["--model.text_encoder=coattn.encoders.HFTextEncoder",
                       "--model.text_encoder.init_args.model=no-such-org/no-such-model"],
                      "cannot load text model 'no-such-org/no-such-model'"),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_a_refused_setting_is_one_line_naming_its_key(case, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra, expected = SETTINGS[case]
    line = one_error_line(capsys, ["fit", *tiny_fit_args(tiny_clotho), *extra])
    assert line.startswith(expected), line
    if case == "hf_id_offline":
        assert "model.text_encoder.init_args.model" in line


def test_debug_switch_shows_the_traceback(tiny_clotho, tmp_path, monkeypatch):
    from coattn.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COATTN_DEBUG", "1")
    with pytest.raises(ConfigError, match="model.cascade.init_args.depth") as exc:
        main(["fit", *tiny_fit_args(tiny_clotho), "--model.cascade.init_args.depth=0"])
    assert isinstance(exc.value.__cause__, ValueError)  # the original error and its traceback are kept


@pytest.mark.slow
def test_csv_header_problem_through_the_cli(tiny_clotho, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for name in ("development", "validation", "evaluation"):
        os.symlink(tiny_clotho / name, root / name)
        text = (tiny_clotho / f"clotho_captions_{name}.csv").read_text(encoding="utf-8")
        (root / f"clotho_captions_{name}.csv").write_text(text.replace("caption_3", "caption 3", 1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["fit", *tiny_fit_args(root)])
    assert "clotho_captions_development.csv: row 1 (header) lacks column(s) ['caption_3']" in line


# ---- 11. a missing validation caption file, through the CLI ---------------------------------------
@pytest.mark.slow
def test_missing_validation_csv_through_the_cli(tiny_clotho, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for name in ("development", "evaluation"):
        os.symlink(tiny_clotho / name, root / name)
        os.symlink(tiny_clotho / f"clotho_captions_{name}.csv", root / f"clotho_captions_{name}.csv")
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["fit", *tiny_fit_args(root)])
    assert line.startswith(f"no validation caption file {root}/clotho_captions_validation.csv")


# ---- 7. settings under which a fit trains nothing ---------------------------------------------------
@pytest.mark.parametrize("setting", ["--trainer.limit_train_batches=0", "--trainer.max_epochs=0",
                                     "--trainer.max_steps=0"])
def test_a_fit_that_would_train_nothing_is_refused(setting, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["fit", *tiny_fit_args(tiny_clotho), setting])
    assert line.startswith(f"{setting[2:]}: this fit would train nothing")
    assert not (tmp_path / "runs").exists()


# ---- 9. an evaluation without weights ----------------------------------------------------------------
@pytest.mark.parametrize("stage", ["test", "validate", "predict"])
def test_evaluation_without_ckpt_path_is_refused(stage, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, [stage, *tiny_fit_args(tiny_clotho)])
    assert line.startswith(f"`coattn {stage}` needs the weights to evaluate: pass --ckpt_path")


@pytest.mark.parametrize("which", ["last", "best"])
def test_ckpt_path_last_or_best_without_a_run_is_refused(which, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["test", *tiny_fit_args(tiny_clotho), "--ckpt_path", which])
    assert line.startswith(f"--ckpt_path {which}: no last*.ckpt in runs/demo_scratch/checkpoints")


def test_untrained_flag_explains_the_tiny_tokenizer(tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["test", *tiny_fit_args(tiny_clotho), "--untrained", "true"])
    assert line.startswith("--untrained true: TinyTextEncoder's tokenizer is trained by `coattn fit`")


# ---- 12 and 3. output folders that cannot be written -----------------------------------------------
def _unwritable(tmp_path, kind: str) -> str:
    if kind == "under_a_file":
        (tmp_path / "a_file").write_text("not a folder")
        return str(tmp_path / "a_file" / "run")
    if os.geteuid() == 0:  # root writes through permission bits: a read-only file system (sysfs) it is
        return "/sys/coattn_run"
    (tmp_path / "ro").mkdir(mode=0o555)
    return str(tmp_path / "ro" / "run")


@pytest.mark.parametrize("kind", ["under_a_file", "read_only"])
def test_run_folder_that_cannot_be_written(kind, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _unwritable(tmp_path, kind)
    monkeypatch.setenv("COATTN_RUN_DIR", folder)
    line = one_error_line(capsys, ["fit", *tiny_fit_args(tiny_clotho)])
    assert line.startswith(f"trainer.default_root_dir: cannot write to '{folder}'")


@pytest.fixture
def model_ckpt(iterating_state, tmp_path):
    """A checkpoint of the tiny model (never trained)."""
    import torch

    path = tmp_path / "model.ckpt"
    torch.save(iterating_state, path)
    return str(path)


@pytest.mark.parametrize("kind", ["under_a_file", "read_only"])
def test_results_dir_that_cannot_be_written(kind, model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _unwritable(tmp_path, kind)
    line = one_error_line(capsys, ["test", *tiny_fit_args(tiny_clotho), f"--model.evaluation.results_dir={folder}",
                                   "--ckpt_path", model_ckpt])
    assert line.startswith(f"model.evaluation.results_dir: cannot write to '{folder}'")


def test_negative_bootstrap_is_refused_before_scoring(model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(capsys, ["test", *tiny_fit_args(tiny_clotho), "--model.evaluation.bootstrap=-5",
                                   "--ckpt_path", model_ckpt])
    assert line.startswith("model.evaluation.bootstrap must be >= 0") and line.endswith("got -5")
    assert not list(tmp_path.rglob("metrics.json"))  # nothing was scored


@pytest.mark.slow
def test_results_that_cannot_be_written_keep_the_metrics(model_ckpt, tiny_clotho, tmp_path, monkeypatch, capsys):
    """The folder fails only when the results are written (a full disk): the table and the metrics as JSON
    are printed first, the error names the folder, the exit code is not 0."""
    import errno
    import json

    import coattn.results

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(coattn.results, "write_results", full_disk)
    capsys.readouterr()
    assert main(["test", *tiny_fit_args(tiny_clotho), "--ckpt_path", model_ckpt]) == 1
    out, err = capsys.readouterr()
    assert ("coattn: error: could not write the test results to runs/demo_scratch/results/test "
            "(No space left on device)") in err
    table, printed = out.index("mAP@10"), json.loads(next(x for x in out.splitlines() if x.startswith('{"metrics"')))
    assert table < out.index('{"metrics"') and 0 <= printed["metrics"]["t2a_mAP@10"] <= 1
