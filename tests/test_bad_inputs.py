"""The bad-input catalogue (issue 6, part 2): one case each, through the real code paths.

Every case ends in a reported skip (with a count) or a clear start-up error naming the file, row
or key; never a traceback from inside a DataLoader worker, never a hang (timeouts on the loaders).
Policy for all-silent clips: kept for training and evaluation (a real clip of a quiet scene;
dropping it would change the split), reported by ``coattn data-check`` as a warning.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from coattn.tools.data_check import check_split
from data_modules.clotho import CAPTION_COLUMNS, ClothoDataModule
from data_modules.datasets import collate

SR = 44100
GOOD = "good.wav"


def _tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def _write(path: Path, kind: str) -> None:
    """Write the audio file of one case."""
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated_header":
        sf.write(path, _tone(0.5), SR)
        path.write_bytes(path.read_bytes()[:20])
    elif kind == "text_as_wav":
        path.write_text("this is not audio, just text with a .wav name\n")
    elif kind in ("nan", "inf"):
        x = _tone(0.5)
        x[100:110] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
    elif kind == "silent":
        sf.write(path, np.zeros(SR, np.float32), SR)
    elif kind == "ch8":
        sf.write(path, _tone(0.5, channels=8), SR)
    elif kind in ("sr8k", "sr96k"):
        sr = 8000 if kind == "sr8k" else 96000
        sf.write(path, _tone(0.5, sr), sr)
    elif kind == "short":
        sf.write(path, _tone(0.05), SR)
    elif kind == "ten_minutes":
        sf.write(path, _tone(600, 16000), 16000)  # 16 kHz keeps the file at 19 MB
    elif kind == "pcm24":
        sf.write(path, _tone(1.5), SR, subtype="PCM_24")
    elif kind == "float32":
        sf.write(path, _tone(1.5), SR, subtype="FLOAT")
    elif kind == "flac":
        sf.write(path, _tone(1.5), SR, format="FLAC")
    else:
        raise ValueError(kind)


# case -> (file name, outcome, data-check finding)
AUDIO_CASES = {
    "zero_byte": ("zero.wav", "skip", "unreadable"),
    "truncated_header": ("truncated.wav", "skip", "unreadable"),
    "text_as_wav": ("text.wav", "skip", "unreadable"),
    "nan": ("nan.wav", "skip", "nan_inf"),
    "inf": ("inf.wav", "skip", "nan_inf"),
    "silent": ("silent.wav", "keep", "silent"),
    "ch8": ("eight_channels.wav", "keep", "unusual_channels"),
    "sr8k": ("rate_8k.wav", "keep", "unusual_sample_rate"),
    "sr96k": ("rate_96k.wav", "keep", "unusual_sample_rate"),
    "short": ("short_0.05s.wav", "keep", "very_short"),
    "ten_minutes": ("ten_minutes.wav", "keep", "unusual_sample_rate"),
    "pcm24": ("pcm24.wav", "keep", None),
    "float32": ("float32.wav", "keep", None),
    "flac": ("clip.flac", "keep", None),
}


def _clotho(root: Path, rows: list[dict], extra_cols: tuple[str, ...] = ()) -> None:
    """Clotho v2.1 layout whose three splits share one caption file (only train is used)."""
    for folder in ("development", "validation", "evaluation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cols = ["file_name", *CAPTION_COLUMNS, *extra_cols]
    for split in ("development", "validation", "evaluation"):
        with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, f"a caption of {r['file_name']}") for c in cols})


def _dm(root: Path, **kw) -> ClothoDataModule:
    return ClothoDataModule(root=str(root), batch_size=2, eval_batch_size=2, clip_seconds=1.0,
                            val_audio_dir="development", test_audio_dir="development",
                            report_dir=str(root / "reports"), **kw)


def _with_good(root: Path, *names: str, **row_extra) -> list[dict]:
    sf.write(root / "development" / GOOD, _tone(1.0), SR)
    return [{"file_name": GOOD}, *({"file_name": n, **row_extra} for n in names)]


# ---- audio files ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_bad_audio_file(case, tmp_path, caplog):
    name, outcome, finding = AUDIO_CASES[case]
    (tmp_path / "development").mkdir()
    rows = _with_good(tmp_path, name)
    _clotho(tmp_path, rows)
    _write(tmp_path / "development" / name, case)
    dm = _dm(tmp_path)
    dm.setup("fit")
    ds = dm._dataset("val")  # ClipDataset: one item per clip, deterministic crop
    k = dm.split_clips("val").index(name)
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        item = ds[k]
    assert item["audio"].shape == (dm.num_samples,) and torch.isfinite(item["audio"]).all()
    if outcome == "skip":
        assert item["valid"] is False and not item["audio"].any()
        assert dm.skipped_clips["val"] == 1
        assert name in caplog.text and "replaced by silence (1 so far" in caplog.text
    else:
        assert item["valid"] is True and dm.skipped_clips["val"] == 0
        if case != "silent":
            assert item["audio"].abs().max() > 0.01
    # coattn data-check reports it (error -> excluded; warning -> kept)
    report = check_split(dm, "train", {44100, 48000}, 2, -60.0, 1.0, 1, True)
    found = {k2: [f["file"] for f in v] for k2, v in report["problems"].items()}
    if finding:
        assert name in found.get(finding, []), found
    else:
        assert not any(name in v for v in found.values()), found


def test_all_bad_files_through_dataloader_workers(tmp_path):
    """Every bad file at once through 2 worker processes: silence + valid=False, counted, no worker dies."""
    (tmp_path / "development").mkdir()
    names = [v[0] for k, v in AUDIO_CASES.items() if k != "ten_minutes"]
    rows = _with_good(tmp_path, *names)
    _clotho(tmp_path, rows)
    for case, (name, _, _) in AUDIO_CASES.items():
        if case != "ten_minutes":
            _write(tmp_path / "development" / name, case)
    dm = _dm(tmp_path, num_workers=2)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm._dataset("val"), batch_size=4, num_workers=2, collate_fn=collate,
                                         timeout=60)
    valid = {}
    for batch in loader:
        valid.update(zip(batch["fnames"], batch["valid"].tolist()))
    expected = {v[0]: v[1] == "keep" for k, v in AUDIO_CASES.items() if k != "ten_minutes"}
    assert valid == {GOOD: True, **expected}
    assert dm.skipped_clips["val"] == sum(not v for v in expected.values())  # counted across workers


def test_missing_file_is_skipped_and_listed(tmp_path, caplog):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path, "not_there.wav"))
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD] and split.missing == ["not_there.wav"]
    assert "1 missing" in caplog.text
    assert (tmp_path / "reports/missing_train.txt").read_text() == "not_there.wav\n"


@pytest.mark.parametrize("name", ["../outside.wav", "/etc/passwd", "link_out.wav"],
                         ids=["dotdot", "absolute", "symlink_out_of_root"])
def test_unsafe_file_names_are_rejected(name, tmp_path, caplog):
    (tmp_path / "development").mkdir()
    outside = tmp_path / "outside.wav"
    sf.write(outside, _tone(0.5), SR)
    (tmp_path / "development" / "link_out.wav").symlink_to(outside)
    _clotho(tmp_path, _with_good(tmp_path, name))
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD] and split.rejected == [name]
    assert "1 rejected" in caplog.text and name in caplog.text
    assert name in (tmp_path / "reports/rejected_train.txt").read_text()
    report = check_split(_dm(tmp_path), "train", set(), 2, -60.0, 1.0, 1, True)
    assert [f["file"] for f in report["problems"]["unsafe_name"]] == [name]


# ---- caption files ----------------------------------------------------------------------------
def test_csv_missing_a_column(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    csv_path = tmp_path / "clotho_captions_development.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop caption_5
    with pytest.raises(ValueError, match=r"clotho_captions_development\.csv: row 1 \(header\) lacks .*caption_5"):
        _dm(tmp_path).split("train")


def test_csv_extra_columns_are_ignored(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path, sound_id="123"), extra_cols=("sound_id", "license"))
    split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD] and len(split.captions[0]) == 5


def test_csv_duplicated_rows_read_once(tmp_path, caplog):
    (tmp_path / "development").mkdir()
    rows = _with_good(tmp_path)
    _clotho(tmp_path, rows + rows)
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD] and len(split.captions[0]) == 5
    assert "1 duplicated rows read once" in caplog.text
    report = check_split(_dm(tmp_path), "train", set(), 2, -60.0, 1.0, 1, True)
    assert [f["file"] for f in report["problems"]["duplicate_rows"]] == [GOOD]


def test_csv_empty_captions_dropped_and_counted(tmp_path, caplog):
    (tmp_path / "development").mkdir()
    sf.write(tmp_path / "development" / "b.wav", _tone(0.5), SR)
    rows = _with_good(tmp_path)
    rows[0]["caption_2"] = "  "
    rows.append({"file_name": "b.wav", **{c: "" for c in CAPTION_COLUMNS}})
    _clotho(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD] and len(split.captions[0]) == 4
    assert "6 empty captions dropped, 1 clips left without captions" in caplog.text and "b.wav" in caplog.text


def test_2000_character_caption_is_truncated_by_the_tokenizer(tmp_path):
    from coattn.encoders import TinyTextEncoder

    (tmp_path / "development").mkdir()
    long = ("a dog barks while rain falls on a tin roof " * 60)[:2000]
    rows = _with_good(tmp_path)
    rows[0]["caption_1"] = long
    _clotho(tmp_path, rows)
    dm = _dm(tmp_path)
    caps = dm.train_captions()
    assert long in caps
    enc = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                          max_length=32)
    enc.fit_tokenizer(caps)
    out = enc([long, "short"])
    assert out.states.shape[1] <= 32 and torch.isfinite(out.states).all()


def test_non_utf8_csv_names_the_row(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    path = tmp_path / "clotho_captions_development.csv"
    path.write_bytes(path.read_bytes() + "b.wav,caf\xe9,x,x,x,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"clotho_captions_development\.csv: row 3 is not valid UTF-8"):
        _dm(tmp_path).split("train")


# ---- configuration and checkpoints --------------------------------------------------------------
from tests.reliability_helpers import DEMO, tiny_fit_args  # noqa: E402


def _cli_error(args, capsys) -> str:
    from coattn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    return capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  cascade:\n    init_args:\n      depht: 3\n")
    err = _cli_error(["fit", "--config", DEMO, "--config", str(bad), "--print_config"], capsys)
    assert "depht" in err


def test_wrong_type_in_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dim: big\n")
    err = _cli_error(["fit", "--config", DEMO, "--config", str(bad), "--print_config"], capsys)
    assert "embed_dim" in err and "big" in err


def test_nonexistent_checkpoint(tiny_clotho, tmp_path, monkeypatch, capsys):
    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["test", *tiny_fit_args(tiny_clotho), "--ckpt_path", "nowhere/model.ckpt"]) == 1
    assert "checkpoint not found: 'nowhere/model.ckpt'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def iterating_state(tiny_clotho):
    """The state of a tiny iterating model built by the CLI, its hyper-parameters and tokenizer state."""
    from coattn.train.cli import build_cli

    cli = build_cli(tiny_fit_args(tiny_clotho), run=False)
    enc = cli.model.model.text_encoder
    enc.fit_tokenizer(cli.datamodule.train_captions())
    return {"state_dict": cli.model.state_dict(), "hyper_parameters": dict(cli.model.hparams),
            "tokenizer_state": enc.tokenizer_state(), "pytorch-lightning_version": "2.6.6",
            "epoch": 0, "global_step": 0}


def test_checkpoint_of_another_cascade_without_hparams_is_a_clear_error(iterating_state, tiny_clotho, tmp_path,
                                                                          monkeypatch, capsys):
    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    ckpt = {k: v for k, v in iterating_state.items() if k != "hyper_parameters"}
    torch.save(ckpt, tmp_path / "iterating.ckpt")
    rc = main(["test", *tiny_fit_args(tiny_clotho), "--model.cascade.init_args.kind=stacking",
               "--ckpt_path", "iterating.ckpt"])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit the model this config builds" in err and "iterating.ckpt" in err


@pytest.mark.slow
def test_checkpoint_hparams_win_over_the_yaml(iterating_state, tiny_clotho, tmp_path, monkeypatch, capsys):
    """With hyper-parameters in the checkpoint, the model is the checkpoint's (and the CLI says what it overrode)."""
    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save(iterating_state, tmp_path / "iterating.ckpt")
    rc = main(["test", *tiny_fit_args(tiny_clotho), "--model.cascade.init_args.kind=stacking",
               "--model.evaluation.bootstrap=0", "--ckpt_path", "iterating.ckpt"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "model.cascade.init_args.kind: 'iterating' (config: 'stacking')" in err
    metrics = json.loads((tmp_path / "runs/demo_scratch/results/test/metrics.json").read_text())
    assert metrics["extra"]["cascade"] == "iterating"


def test_unsafe_or_truncated_checkpoint_is_refused(iterating_state, tiny_clotho, tmp_path, monkeypatch, capsys):
    import argparse

    from coattn.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save({**iterating_state, "extra": argparse.Namespace(evil=True)}, tmp_path / "unsafe.ckpt")
    assert main(["test", *tiny_fit_args(tiny_clotho), "--ckpt_path", "unsafe.ckpt"]) == 1
    err = capsys.readouterr().err
    assert "refusing to load 'unsafe.ckpt'" in err and "argparse.Namespace" in err and "weights_only=True" in err
    torch.save(iterating_state, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    assert main(["test", *tiny_fit_args(tiny_clotho), "--ckpt_path", "truncated.ckpt"]) == 1
    assert "cannot read checkpoint 'truncated.ckpt' (truncated" in capsys.readouterr().err
