"""AudioCapsDataModule: real AudioCaps CSVs, file-name templates, extension search, missing clips."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_modules import AudioCapsDataModule

SHARED = Path(os.environ.get("COATTN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
AUDIOCAPS = SHARED / "audiocaps"
needs_shared = pytest.mark.skipif(not AUDIOCAPS.is_dir(), reason=f"real AudioCaps files not found under {SHARED}")
COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]


def _write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)


def _tone(path: Path, seconds: float, sr: int, channels: int = 1, fmt: str | None = None) -> None:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, sr, format=fmt)


@pytest.fixture()
def tiny(tmp_path) -> Path:
    """train: 4 clips (1 caption each), val: 2 clips x 5 captions, test: 3 clips (1 missing)."""
    root = tmp_path / "audiocaps"
    for split in ("train", "val", "test"):
        (root / "audio" / split).mkdir(parents=True)
    _write_csv(root / "train.csv", [[100 + i, f"tr{i}", 30, f"train caption {i}"] for i in range(4)])
    _write_csv(root / "val.csv", [[200 + 5 * c + k, f"va{c}", 0, f"val clip {c} caption {k}"]
                                  for k in range(5) for c in range(2)])  # interleaved rows, as in the release
    _write_csv(root / "test.csv", [[300 + 5 * c + k, f"te{c}", 10, f"test clip {c}, caption {k}"]
                                   for c in range(3) for k in range(5)])
    for i in range(4):  # mixed formats: the extension search finds .flac / .ogg for a .wav template
        ext, fmt = [(".wav", None), (".flac", None), (".ogg", "OGG"), (".wav", None)][i]
        _tone(root / "audio" / "train" / f"tr{i}{ext}", 10.0, 44100)
    _tone(root / "audio" / "val" / "va0.wav", 10.0, 32000, channels=2)  # stereo 32 kHz
    _tone(root / "audio" / "val" / "va1.wav", 4.0, 48000)  # short: repeat-padded
    _tone(root / "audio" / "test" / "te0.wav", 10.0, 48000)
    _tone(root / "audio" / "test" / "te2.wav", 10.0, 48000)  # te1 never downloaded
    return root


def test_templates_extension_search_and_batches(tiny, tmp_path):
    dm = AudioCapsDataModule(str(tiny), batch_size=2, eval_batch_size=4, report_dir=str(tmp_path / "rep"))
    assert dm.split_clips("train") == ["tr0.wav", "tr1.flac", "tr2.ogg", "tr3.wav"]
    train = list(dm.train_dataloader())
    assert len(train) == 2 and all(b["audio"].shape == (2, 480000) and b["valid"].all() for b in train)
    assert all(len(b["captions"]) == 2 for b in train)
    val = next(iter(dm.val_dataloader()))
    assert val["audio"].shape == (2, 480000) and val["fnames"] == ["va0.wav", "va1.wav"]
    assert val["caption_clip"].tolist() == [0] * 5 + [1] * 5  # 5 captions grouped per clip
    assert val["captions"][:2] == ["val clip 0 caption 0", "val clip 0 caption 1"]
    # the 4 s clip is tiled twice (8 s) then zero-padded to 10 s, CLAP's repeatpad
    a = val["audio"][1]
    assert torch.allclose(a[:192000], a[192000:384000]) and a[384000:].abs().max() == 0
    # a missing clip: counted, listed in a file, never fatal
    test = list(dm.test_dataloader())
    assert [f for b in test for f in b["fnames"]] == ["te0.wav", "te2.wav"]
    assert dm.split("test").missing == ["te1.wav"]
    assert (tmp_path / "rep" / "missing_test.txt").read_text() == "te1.wav\n"
    texts, clips = dm.split_captions("test")
    assert len(texts) == 10 and clips == [0] * 5 + [1] * 5 and "test clip 1, caption 0" not in texts


@pytest.mark.parametrize("template,names", [
    ("Y{youtube_id}.wav", lambda r: f"Y{r[1]}.wav"),
    ("{youtube_id}_{start_time}.flac", lambda r: f"{r[1]}_{r[2]}.flac"),
    ("{youtube_id}_{start:.3f}_{end:.3f}.wav", lambda r: f"{r[1]}_{float(r[2]):.3f}_{float(r[2]) + 10:.3f}.wav"),
    ("{audiocap_id}.wav", lambda r: f"{r[0]}.wav"),
])
def test_file_name_templates(tmp_path, template, names):
    root = tmp_path / "ac"
    (root / "audio" / "val").mkdir(parents=True)
    rows = [[500 + k, "abc-_D9", 15, f"caption {k}"] for k in range(5)]
    _write_csv(root / "val.csv", rows)
    # with {audiocap_id} each row names a different file: only the 4th exists, and it serves the clip
    _tone(root / "audio" / "val" / names(rows[3]), 1.0, 44100)
    dm = AudioCapsDataModule(str(root), file_template=template, report_dir=str(tmp_path))
    assert dm.split_clips("val") == [names(rows[3])]
    assert dm.split_captions("val") == ([f"caption {k}" for k in range(5)], [0] * 5)


def test_bad_template_and_start_time(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        AudioCapsDataModule(str(tmp_path), file_template="{video}.wav")
    (tmp_path / "train.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,x,abc,a dog\n")
    with pytest.raises(ValueError, match=r"train\.csv: row ending at line 2 has start_time 'abc'"):
        AudioCapsDataModule(str(tmp_path)).split_source("train")


@needs_shared
@pytest.mark.parametrize("version,split,rows,clips", [
    ("v1", "train", 49838, 49838), ("v1", "val", 2475, 495), ("v1", "test", 4875, 975),
    ("v2", "val", None, None), ("v2", "test", None, None)])
def test_parses_every_row_of_the_real_csvs(tmp_path, version, split, rows, clips):
    folder = AUDIOCAPS / version
    if not (folder / f"{split}.csv").is_file():
        pytest.skip(f"{folder}/{split}.csv absent")
    dm = AudioCapsDataModule(str(folder), **{f"{split}_audio_dir": str(tmp_path)}, report_dir=str(tmp_path))
    src = dm.split_source(split)
    with open(folder / f"{split}.csv", encoding="utf-8") as f:
        n_rows = sum(1 for _ in csv.DictReader(f))
    assert len(src.rows) == n_rows == (rows or n_rows)
    per_clip = {}
    for fname, caps, _ in src.rows:
        per_clip.setdefault(fname, []).extend(caps)
    assert len(per_clip) == (clips or len(per_clip))
    if split != "train":
        assert all(len(c) == 5 for c in per_clip.values())  # val/test group 5 captions per clip
    assert all(c[0].strip() for _, c, _ in src.rows)
    with pytest.raises(ValueError, match="no usable clips"):  # no audio at all: a clear error, not an empty loader
        dm.split(split)
