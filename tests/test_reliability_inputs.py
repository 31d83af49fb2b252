"""Third reliability pass: every bad input of the tools is one line at start-up, never a traceback.

The catalogue runs each bad case through the real ``coattn`` command in a subprocess and asserts: exit
code 1 or 2, stderr is ONE line starting with ``coattn: error:`` (or argparse's usage line + error),
naming the file (and entry) the case broke, and no "Traceback". The cases that are not errors (a binary
line in the augmentation cache is skipped with a warning; a sweep re-tests a run whose metrics.json is
damaged; ``data-check wavcaps`` on a healthy tree) have their own tests below.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.reliability_helpers import coattn_cmd, subprocess_env

CAPTIONS = ["a dog barks", "rain falls on a roof", "a bell rings twice", "birds sing in the morning"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A small exported model folder (save_pretrained of a tiny model with a trained tokenizer)."""
    import torch

    from coattn.model import CoAttnModel, build_component

    folder = tmp_path_factory.mktemp("exported") / "model"
    model = CoAttnModel(*(build_component({"class_path": f"coattn.{cls}", "init_args": args}, torch.nn.Module)
                          for cls, args in (("encoders.ClapAudioEncoder", {"config": "HTSAT-mini"}),
                                            ("encoders.TinyTextEncoder", {"vocab_size": 300}),
                                            ("coattention.CoAttentionCascade", {"kind": "none"}))), embed_dim=8)
    model.text_encoder.fit_tokenizer(CAPTIONS * 5)
    model.save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    return folder


def _damaged_copy(exported: Path, tmp: Path, damage) -> Path:
    import shutil

    folder = tmp / "damaged"
    shutil.copytree(exported, folder)
    damage(folder)
    return folder


def _unwritable(tmp: Path, kind: str) -> str:
    if kind == "under_a_file":
        (tmp / "a_file").write_text("not a folder")
        return str(tmp / "a_file" / "out")
    if os.geteuid() == 0:  # root writes through permission bits: a read-only file system (sysfs) it is
        return "/sys/coattn_export"
    (tmp / "ro").mkdir(mode=0o555)
    return str(tmp / "ro" / "out")


def _metrics(tmp: Path, name: str, content: str) -> str:
    path = tmp / name
    path.write_text(content, encoding="utf-8")
    return str(path)


GOOD = json.dumps({"metrics": {"t2a_mAP@10": 0.5, "t2a_R@1": 0.3}})


def _search(folder: Path, tmp: Path) -> list[str]:
    (tmp / "clips").mkdir(exist_ok=True)
    return ["search", "a dog barks", "--model", str(folder), "--audio-dir", str(tmp / "clips"),
            "--index-dir", str(tmp / "index")]


def _drop_text_encoder(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["text_encoder"]
    (folder / "config.json").write_text(json.dumps(config))


def _sweep_yaml(tmp: Path) -> str:
    path = tmp / "broken.yaml"
    path.write_text("method: grid\nparameters:\n  model.cascade.init_args.depth:\n    values: [1, 2\n",
                    encoding="utf-8")
    return str(path)


# case -> (build argv from tmp_path [and the exported folder], text the one line must contain)
CASES = {
    "export_out_under_a_file": (lambda t, e: ["export", "--ckpt_path", str(t / "x.ckpt"),
                                              _unwritable(t, "under_a_file")], "OUT_DIR: cannot write to"),
    "export_out_read_only": (lambda t, e: ["export", "--ckpt_path", str(t / "x.ckpt"), _unwritable(t, "read_only")],
                             "OUT_DIR: cannot write to"),
    "export_bad_metrics": (lambda t, e: ["export", "--ckpt_path", str(t / "x.ckpt"), str(t / "out"),
                                         "--metrics", _metrics(t, "m.json", '{"metrics": {"t2a_mAP@10": 0.')],
                           "--metrics {t}/m.json: not valid JSON"),
    "hub_garbage_tokenizer": (lambda t, e: _search(_damaged_copy(e, t, lambda f: (f / "tokenizer.json").write_bytes(
        b"\x00\xffgarbage{")), t), "cannot read the tokenizer {t}/damaged/tokenizer.json"),
    "hub_tokenizer_not_a_tokenizer": (lambda t, e: _search(_damaged_copy(e, t, lambda f: (f / "tokenizer.json")
                                                                        .write_text('{"a": 1}')), t),
                                      "cannot read the tokenizer {t}/damaged/tokenizer.json"),
    "hub_config_without_text_encoder": (lambda t, e: _search(_damaged_copy(e, t, _drop_text_encoder), t),
                                        "{t}/damaged/config.json: 'text_encoder' is missing"),
    "hub_config_not_json": (lambda t, e: _search(_damaged_copy(e, t, lambda f: (f / "config.json")
                                                               .write_text("{ not json")), t),
                            "cannot read {t}/damaged/config.json"),
    "augment_missing_captions": (lambda t, e: ["augment", str(t / "nope.csv"), "--out", str(t / "aug.json"),
                                               "--encoder", "ngram"], "captions {t}/nope.csv: no such file"),
    "augment_missing_paraphrases": (lambda t, e: ["augment", _metrics(t, "c.txt", "a dog barks\n"), "--out",
                                                  str(t / "aug.json"), "--paraphrases", str(t / "p.jsonl"),
                                                  "--encoder", "ngram"], "--paraphrases {t}/p.jsonl: no such file"),
    "augment_binary_captions_text": (lambda t, e: ["augment", str(_bytes(t / "c.txt", b"a dog\n\xff\xfe\x00\n")),
                                                   "--out", str(t / "aug.json"), "--paraphrases",
                                                   _metrics(t, "p.jsonl", ""), "--encoder", "ngram"],
                                     "{t}/c.txt: line 2 is not UTF-8 text"),
    "probe_metadata_bad_json": (lambda t, e: ["probe", "--config", "x.yaml", "--ckpt_path", "x.ckpt", "--metadata",
                                              _metrics(t, "meta.json", "{\"development/a.wav\": ")],
                                "{t}/meta.json: not valid JSON"),
    "probe_metadata_missing": (lambda t, e: ["probe", "--config", "x.yaml", "--ckpt_path", "x.ckpt", "--metadata",
                                             str(t / "meta.json")], "{t}/meta.json: variants file not found"),
    "probe_captions_missing": (lambda t, e: ["probe", "--captions", str(t / "nope.csv")],
                               "--captions {t}/nope.csv: no such caption file"),
    "compare_truncated_json": (lambda t, e: ["compare", _metrics(t, "a.json", GOOD), _metrics(t, "b.json", GOOD[:20])],
                               "{t}/b.json: not valid JSON"),
    "compare_json_list": (lambda t, e: ["compare", _metrics(t, "a.json", "[1, 2]")],
                          "{t}/a.json: holds a JSON list, no \"metrics\" object"),
    "compare_string_metric": (lambda t, e: ["compare", _metrics(t, "a.json", GOOD), _metrics(
        t, "b.json", json.dumps({"metrics": {"t2a_mAP@10": "0.5"}}))], "{t}/b.json: metric 't2a_mAP@10' is '0.5'"),
    "compare_empty_reference": (lambda t, e: ["compare", _metrics(t, "a.json", "{}"), _metrics(t, "b.json", GOOD)],
                                "{t}/a.json: holds keys [], no \"metrics\" object"),
    "compare_missing": (lambda t, e: ["compare", str(t / "absent.json")], "{t}/absent.json: not found"),
    "sweep_missing_file": (lambda t, e: ["sweep", str(t / "nope.yaml"), "--dry-run"],
                           "{t}/nope.yaml: no such sweep file"),
    "sweep_yaml_syntax_error": (lambda t, e: ["sweep", _sweep_yaml(t), "--dry-run"],
                                "{t}/broken.yaml: line 5, column 1: not valid YAML"),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def run_cli(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*coattn_cmd(), *argv], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> str:
    """Exit 1 or 2; stderr one ``coattn: error:`` line (or argparse's usage + error line); no traceback."""
    err = proc.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode in (1, 2) and "Traceback" not in err, (proc.returncode, err[-3000:])
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and lines[0].startswith("coattn: error: "), err[-3000:]
    assert expected in lines[0], (expected, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, exported, tmp_path):
    build, expected = CASES[case]
    argv = build(tmp_path, exported)
    assert_one_line(run_cli(argv, tmp_path), expected.format(t=tmp_path))


def test_hub_errors_in_python_name_the_file(exported, tmp_path):
    """The same folders through ``CoAttnModel.from_pretrained`` (the library): the error names the file."""
    from coattn.errors import CheckpointError, ConfigError
    from coattn.model import CoAttnModel

    bad = _damaged_copy(exported, tmp_path, lambda f: (f / "config.json").write_text("[1, 2"))
    with pytest.raises(ConfigError, match=f"cannot read {bad}/config.json"):
        CoAttnModel.from_pretrained(bad)
    (bad / "config.json").write_text((exported / "config.json").read_text())
    (bad / "tokenizer.json").write_text("garbage")
    with pytest.raises(CheckpointError, match=f"cannot read the tokenizer {bad}/tokenizer.json"):
        CoAttnModel.from_pretrained(bad)
    assert CoAttnModel.from_pretrained(exported) is not None  # the intact folder still loads


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_dataset_weights_nan_or_inf_are_refused(value):
    """``weights: {clotho: .nan}`` passed ``<= 0`` and trained on garbage; inf zeroed every other weight."""
    from coattn.errors import ConfigError
    from data_modules.clotho import ClothoDataModule
    from data_modules.multi import MultiDataModule

    weight = float(value.lstrip("."))
    datasets = {"a": ClothoDataModule(root="/nonexistent/a"), "b": ClothoDataModule(root="/nonexistent/b")}
    with pytest.raises(ConfigError, match=f"data weights: a: {weight} is not a finite number"):
        MultiDataModule(datasets=datasets, weights={"a": weight, "b": 1.0})


def test_augment_cache_with_a_binary_line_is_skipped_with_a_warning(tmp_path, caplog):
    """A line of binary garbage in the resumable cache (a disk or copy fault): a warning naming the file and
    line, the other lines kept (strict readers: one ``DataError`` line); never a UnicodeDecodeError."""
    from coattn.errors import DataError
    from data_modules.augmentation import read_paraphrase_jsonl

    cache = tmp_path / "aug.json.cache.jsonl"
    good = [json.dumps({"caption": c, "paraphrases": [c + " again"]}) for c in CAPTIONS[:2]]
    cache.write_bytes((good[0] + "\n").encode() + b"\x89PNG\xff\xfe\x00\x01\n" + (good[1] + "\n").encode())
    with caplog.at_level("WARNING"):
        got = read_paraphrase_jsonl(cache)
    assert sorted(got) == sorted(CAPTIONS[:2])
    assert any(f"{cache}: skipping line 2" in r.getMessage() for r in caplog.records), caplog.text
    with pytest.raises(DataError, match="line 2 is not a"):
        read_paraphrase_jsonl(cache, strict=True)
    # through the command: selection from that cache works, one warning line, no traceback
    csv = tmp_path / "caps.txt"
    csv.write_text("\n".join(CAPTIONS[:2]) + "\n")
    proc = run_cli(["augment", str(csv), "--out", str(tmp_path / "aug.json"), "--paraphrases", str(cache),
                    "--encoder", "ngram", "--top-k", "1"], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "skipping line 2" in proc.stderr and (tmp_path / "aug.json").is_file()


def test_sweep_retests_a_finished_run_whose_metrics_json_is_truncated(tmp_path, monkeypatch, capsys):
    """Resuming a sweep: a run whose results/test/metrics.json was cut short is tested again (one warning
    naming the file), not a JSONDecodeError traceback."""
    from coattn.tools.sweep import runner

    run = tmp_path / "runs" / "p000"
    (run / "results" / "test").mkdir(parents=True)
    (run / "results" / "test" / "metrics.json").write_text('{"metrics": {"t2a_mAP@10": 0.4')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    calls = []

    def fake_run(argv, env, log, in_process):
        calls.append(argv)
        if "test" in argv:
            (run / "results" / "test" / "metrics.json").write_text(json.dumps({"metrics": {"t2a_mAP@10": 0.6}}))
        return 0

    monkeypatch.setattr(runner, "_run_argv", fake_run)
    job = runner.Job("p000", 0, None, {}, ["coattn", "fit", "--config", "x.yaml"], run)
    runner.execute(job, "g", "val/t2a_mAP@10", in_process=False)
    err = capsys.readouterr().err
    assert f"{run}/results/test/metrics.json is damaged" in err and "testing this run again" in err
    assert job.status == "done" and job.test == {"t2a_mAP@10": 0.6}
    assert [a[1] for a in calls] == ["fit", "test"] and "--ckpt_path=last" in calls[0]


def test_data_check_wavcaps_checks_only_its_train_split(tmp_path):
    """WavCaps publishes no val/test: the default splits are those the dataset has (no 2 false errors)."""
    from tests.data_trees import make_wavcaps

    folder = make_wavcaps(tmp_path, {"FreeSound": ["1", "2"], "SoundBible": ["3"]})
    proc = run_cli(["data-check", "wavcaps", str(folder), "--rates", "", "--min-seconds", "0.1",
                    "--report", str(tmp_path / "report.json")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["splits"]) == ["train"] and "0 errors" in proc.stdout
    # asking for a split it does not publish is still reported
    proc = run_cli(["data-check", "wavcaps", str(folder), "--splits", "train", "val", "--rates", "",
                    "--min-seconds", "0.1", "--report", str(tmp_path / "report2.json")], tmp_path)
    assert proc.returncode == 1 and "1 errors" in proc.stdout


@pytest.mark.parametrize("config, extra, expected", [
    ("moments/synth.yaml", ["--model.decode", "detr"], "model.decode must be 'spans' or 'frames', not 'detr'"),
    ("moments/synth.yaml", ["--model.prior", "clap"], "model.prior must be 'none' or 'dual', not 'clap'"),
    ("moments/synth.yaml", ["--model.context", "0"], "model.context must be > 0 seconds"),
    ("demo.yaml", ["--model.loss.count_negatives", "true", "--model.loss.caption_negatives", "false",
                   "--model.init_from", "null"], "model.loss.count_negatives adds count variants"),
])
def test_bad_moment_and_time_keys_are_one_line_before_any_work(config, extra, expected, tmp_path, monkeypatch,
                                                                capsys):
    """The round-4 keys (model.decode / prior / context of a moment config, model.loss.count_negatives) are
    refused at construction, in one line naming the key, before any data is read or model trained."""
    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).resolve().parents[1] / "experiments" / config
    assert main(["fit", "--config", str(cfg), *extra]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("coattn: error: ")]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))  # refused before training


@pytest.mark.parametrize("extra, expected", [
    (["--model.count_head", "1"], "count_head: the largest count must be >= 2, got 1"),
    (["--model.count_head", "4", "--model.count_beta", "0"], "count_beta must be > 0, got 0.0"),
    (["--model.loss.count_weight", "-1"], "model.loss.count_weight must be >= 0, got -1.0"),
    (["--model.loss.count_weight", "1.0"], "model.loss.count_weight > 0 trains the count head: set model.count_head"),
    (["--model.count_head", "4", "--model.loss.count_found_weight", "1.0"],
     "model.loss.count_found_weight weights a part of the count term"),
    (["--model.count_head", "4", "--model.loss.count_weight", "1.0", "--model.loss.count_found_weight", "-1"],
     "model.loss.count_found_weight must be >= 0, got -1.0"),
    (["--model.count_head", "4", "--model.loss.count_rewrite_weight", "1.0"],
     "model.loss.count_rewrite_weight weights a part of the count term"),
])
def test_bad_count_head_keys_are_one_line_before_any_work(extra, expected, tmp_path, monkeypatch, capsys):
    """The round-6 to 8 keys (model.count_head, count_beta, loss.count_weight, count_found_weight,
    count_rewrite_weight) are refused at construction, in one line naming the key, before any data is read or model
    trained."""
    test_bad_moment_and_time_keys_are_one_line_before_any_work("demo.yaml", [*extra, "--model.init_from", "null"],
                                                                expected, tmp_path, monkeypatch, capsys)
