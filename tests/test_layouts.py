"""aac-datasets layouts (v0.7.0) for Clotho and AudioCaps: detected, or chosen with ``layout``.
WavCaps' aac-datasets layout is tested in test_data_wavcaps.py."""
from __future__ import annotations

import os

import pytest

from coattn.errors import ConfigError
from data_modules import AudioCapsDataModule, ClothoDataModule
from tests.conftest import SHARED_DATA
from tests.data_trees import make_audiocaps, make_clotho


def test_clotho_aac_datasets_layout_is_detected(tmp_path):
    clips = make_clotho(tmp_path, layout="aac-datasets")
    for root in (tmp_path, tmp_path / "CLOTHO_v2.1"):  # the aac-datasets root, or its CLOTHO_v2.1 folder
        dm = ClothoDataModule(root=str(root))
        assert dm.layout == "aac-datasets"
        assert dm.csvs["test"] == tmp_path / "CLOTHO_v2.1/clotho_csv_files/clotho_captions_evaluation.csv"
        s = dm.split("test")
        assert s.fnames == [c[0] for c in clips["test"]] and s.paths[0].parent.name == "evaluation"
        assert s.keys[s.fnames[0]] == f"freesound:{clips['test'][0][1]}"  # from clotho_metadata_evaluation.csv
        assert [len(dm.split(n)) for n in ("train", "val")] == [6, 3]
    assert ClothoDataModule(root=str(tmp_path), layout="aac-datasets").layout == "aac-datasets"
    with pytest.raises(FileNotFoundError, match="clotho_captions_development.csv"):
        ClothoDataModule(root=str(tmp_path), layout="default").split("train")


def test_clotho_default_layout_unchanged_and_forced_aac_fails_clearly(tmp_path):
    make_clotho(tmp_path)
    dm = ClothoDataModule(root=str(tmp_path))
    assert dm.layout == "default" and len(dm.split("train")) == 6
    with pytest.raises(ConfigError, match="CLOTHO_<version>/clotho_csv_files"):
        ClothoDataModule(root=str(tmp_path), layout="aac-datasets")
    with pytest.raises(ConfigError, match="auto, default or aac-datasets"):
        ClothoDataModule(root=str(tmp_path), layout="aac")


@pytest.mark.parametrize("csv_place", ["csv_files_v1", "root"])
def test_audiocaps_aac_datasets_layout(tmp_path, csv_place):
    ids = make_audiocaps(tmp_path, layout="aac-datasets")
    base = tmp_path / "AUDIOCAPS"
    if csv_place == "root":  # aac-datasets v1 also reads AUDIOCAPS/<split>.csv (backward compatibility)
        for name in ("train", "val", "test"):
            os.replace(base / "csv_files_v1" / f"{name}.csv", base / f"{name}.csv")
    dm = AudioCapsDataModule(root=str(tmp_path))
    assert dm.layout == "aac-datasets" and dm.file_template == "{youtube_id}_{start_time}.flac"
    s = dm.split("val")
    assert s.fnames == [f"{y}_30.flac" for y in ids["val"]] and all(len(c) == 5 for c in s.captions)
    assert s.paths[0] == base / "audio_32000Hz" / "val" / f"{ids['val'][0]}_30.flac"
    assert s.keys[s.fnames[0]] == f"audioset:{ids['val'][0]}"
    assert len(dm.split("train")) == 6


def test_audiocaps_default_layout_unchanged(tmp_path):
    ids = make_audiocaps(tmp_path)
    dm = AudioCapsDataModule(root=str(tmp_path))
    assert dm.layout == "default" and dm.file_template == "{youtube_id}.wav"
    assert dm.split("test").fnames == [f"{y}.wav" for y in ids["test"]]
    with pytest.raises(ConfigError, match="AUDIOCAPS"):
        AudioCapsDataModule(root=str(tmp_path), layout="aac-datasets")


def test_real_caption_files_in_the_aac_datasets_layout(tmp_path):
    """The released Clotho and AudioCaps CSVs, placed where aac-datasets puts them, parse in full."""
    if not SHARED_DATA.is_dir():
        pytest.skip("the real caption files are not here")
    clotho_csv = tmp_path / "CLOTHO_v2.1" / "clotho_csv_files"
    clotho_csv.mkdir(parents=True)
    for folder in ("development", "evaluation"):
        name = f"clotho_captions_{folder}.csv"
        (clotho_csv / name).symlink_to(SHARED_DATA / "clotho" / name)
    ac_csv = tmp_path / "AUDIOCAPS" / "csv_files_v1"
    ac_csv.mkdir(parents=True)
    for name in ("train", "val", "test"):
        (ac_csv / f"{name}.csv").symlink_to(SHARED_DATA / "audiocaps" / "v1" / f"{name}.csv")
    clotho = ClothoDataModule(root=str(tmp_path))
    rows = clotho.split_source("test").rows
    assert clotho.layout == "aac-datasets" and len(rows) == 1045 and all(len(r[1]) == 5 for r in rows)
    # the v1 development file (no validation csv): 200 of its 2,893 clips are carved out as validation
    assert [len(clotho.split_source(n).rows) for n in ("train", "val")] == [2693, 200]
    ac = AudioCapsDataModule(root=str(tmp_path))
    for name, n_clips in (("train", 49838), ("val", 495), ("test", 975)):
        source = ac.split_source(name)
        assert len({r[0] for r in source.rows}) == n_clips, name
        assert all(f.endswith(".flac") and k.startswith("audioset:") for f, k in source.keys.items())
    test = ac.split_source("test")
    first = test.rows[0]  # 103549,7fmOlUlwoNg,20,Constant rattling noise and sharp vibrations
    assert first[0] == "7fmOlUlwoNg_20.flac" and test.keys[first[0]] == "audioset:7fmOlUlwoNg"
