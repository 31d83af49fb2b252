"""WavCaps: the release's per-source JSON files, its audio layout, its blacklists, bad files."""
from __future__ import annotations

import json

import pytest

from coattn.errors import ConfigError, DataError
from data_modules.wavcaps import WavCapsDataModule, read_blacklist, read_wavcaps_json
from tests.data_trees import make_wavcaps

# The first two entries of data/json_files/SoundBible/sb_final.json as released (XinhaoMei/WavCaps @ a5a9649c).
SOUNDBIBLE_HEAD = ('{"num_captions_per_audio": 1, "data": [{"title": "Airplane Landing Airport", "description": '
                   '"Large commercial airplane landing at an airport runway.", "author": "Daniel Simion", "href": '
                   '"2219-Airplane-Landing-Airport.html", "caption": "An airplane is landing.", "id": "2219", '
                   '"duration": 14.1424375, "audio": "wav_path", "download_link": '
                   '"http://soundbible.com/grab.php?id=2219&type=wav"}, {"title": "Service Bell Help", "description": '
                   '"Customer ringing service bell in need of help in a store.", "author": "Daniel Simion", "href": '
                   '"2218-Service-Bell-Help.html", "caption": "Someone is ringing a bell.", "id": "2218", "duration": '
                   '1.5698125, "audio": "wav_path", "download_link": '
                   '"http://soundbible.com/grab.php?id=2218&type=wav"}]}')

IDS = {"AudioSet_SL": ["Yr1nicOVtvkQ.wav", "YvfY_TJq7n_U.wav", "YUDGBjjwyaqE.wav"],
       "BBC_Sound_Effects": ["07045061", "07045062"], "FreeSound": ["117790", "156", "204046"],
       "SoundBible": ["2219", "2218"]}


def test_the_released_soundbible_entries_parse(tmp_path):
    path = tmp_path / "sb_final.json"
    path.write_text(SOUNDBIBLE_HEAD, encoding="utf-8")
    assert read_wavcaps_json(path) == [("2219", "An airplane is landing.", 1),
                                       ("2218", "Someone is ringing a bell.", 2)]


@pytest.mark.parametrize("layout", ["default", "aac-datasets"])
def test_all_four_sources_load_with_paths_and_identity_keys(tmp_path, layout):
    folder = make_wavcaps(tmp_path, IDS, layout)
    (folder / "Audio" / "BBC_Sound_Effects" / "07045062.flac").unlink()  # a clip not downloaded
    dm = WavCapsDataModule(root=str(tmp_path))
    assert dm.layout == layout and dm.folder == folder
    s = dm.split("train")
    assert len(s) == 9 and s.missing == ["BBC_Sound_Effects/07045062.flac"]
    # AudioSet_SL: "Y<ytid>.wav" -> Y<ytid>.flac (aac-datasets' rule); the others <id>.flac
    assert s.fnames[:3] == ["AudioSet_SL/Yr1nicOVtvkQ.flac", "AudioSet_SL/YvfY_TJq7n_U.flac",
                            "AudioSet_SL/YUDGBjjwyaqE.flac"]
    assert all(p.is_file() and p.parent.parent == folder / "Audio" for p in s.paths)
    assert s.captions[0] == ["wavcaps AudioSet_SL sound Yr1nicOVtvkQ.wav"]
    assert s.keys["AudioSet_SL/Yr1nicOVtvkQ.flac"] == "audioset:r1nicOVtvkQ"  # = AudioCaps youtube_id r1nicOVtvkQ
    assert s.keys["FreeSound/156.flac"] == "freesound:156" and s.keys["SoundBible/2219.flac"] == "soundbible:2219"


def test_sources_and_other_extensions(tmp_path):
    folder = make_wavcaps(tmp_path, {"FreeSound": ["1", "2"], "SoundBible": ["3"]})
    flac = folder / "Audio" / "FreeSound" / "2.flac"
    flac.rename(flac.with_suffix(".wav"))  # e.g. a converted copy: same stem, another container
    dm = WavCapsDataModule(root=str(tmp_path), sources=["FreeSound"])
    assert dm.split("train").fnames == ["FreeSound/1.flac", "FreeSound/2.wav"]
    with pytest.raises(ConfigError, match="Nope"):
        WavCapsDataModule(root=str(tmp_path), sources=["Nope"])


def test_release_blacklist_json_excludes_through_the_exclude_mechanism(tmp_path):
    folder = make_wavcaps(tmp_path, IDS)
    # The release's format: {"AudioSet": ["Y<ytid>.wav"...], "FreeSound": ["<id>"... "Not found"...]}
    bl = folder / "json_files" / "blacklist" / "blacklist_exclude_test_ac.json"
    bl.parent.mkdir(parents=True)
    bl.write_text(json.dumps({"AudioSet": ["YvfY_TJq7n_U.wav", "Ynotinwavcaps.wav"],
                              "FreeSound": ["156", "Not found", "2219"]}))
    dm = WavCapsDataModule(root=str(tmp_path), blacklist_files=["json_files/blacklist/blacklist_exclude_test_ac.json"])
    s = dm.split("train")
    # FreeSound ids apply to FreeSound only: SoundBible's "2219" stays, as in WavCaps' own loader
    assert sorted(s.excluded) == ["AudioSet_SL/YvfY_TJq7n_U.flac", "FreeSound/156.flac"]
    assert "SoundBible/2219.flac" in s.fnames and len(s) == 8


def test_aac_datasets_and_dcase_blacklist_csvs(tmp_path):
    folder = make_wavcaps(tmp_path, IDS, "aac-datasets")
    (folder / "blacklist_audiocaps.full.csv").write_text("index,id\n0,Yr1nicOVtvkQ.wav\n1,YUDGBjjwyaqE.wav\n")
    (folder / "blacklist_clotho.full.v2.csv").write_text("index,id\n0,117790\n")
    dcase = tmp_path / "dcase2025_task6_excluded_freesound_ids.csv"
    dcase.write_text("sound_id\n204046\nNot found\n")
    assert read_blacklist(dcase) == {"freesound:204046"}
    dm = WavCapsDataModule(root=str(tmp_path), blacklist_files=["blacklist_audiocaps.full.csv",
                                                                "blacklist_clotho.full.v2.csv", str(dcase)])
    s = dm.split("train")
    assert sorted(s.excluded) == ["AudioSet_SL/YUDGBjjwyaqE.flac", "AudioSet_SL/Yr1nicOVtvkQ.flac",
                                  "FreeSound/117790.flac", "FreeSound/204046.flac"]


def test_no_evaluation_splits_unless_carved(tmp_path):
    make_wavcaps(tmp_path, IDS)
    dm = WavCapsDataModule(root=str(tmp_path))
    assert dm.EVAL_SPLITS == () and dm.split_names() == ("train",)
    with pytest.raises(ConfigError, match="no test split"):
        dm.split("test")
    with pytest.raises(ConfigError, match="val_size"):
        dm.split("val")
    carved = WavCapsDataModule(root=str(tmp_path), val_size=3)
    train, val = carved.split("train"), carved.split("val")
    assert len(val) == 3 and len(train) == 7 and not set(train.fnames) & set(val.fnames)


@pytest.mark.parametrize("doc, message", [
    ({"num_captions_per_audio": 1, "data": [{"id": "1", "caption": "ok"}, {"id": "7", "duration": 3.0}]},
     r"fsd_final.json: entry 2 \(id '7'\) lacks field\(s\) \['caption'\]"),
    ({"num_captions_per_audio": 1, "data": [{"caption": "no id"}]}, r"entry 1 \(id None\) lacks field\(s\) \['id'\]"),
    ({"num_captions_per_audio": 5, "data": []}, "num_captions_per_audio is 5"),
    ({"rows": []}, "an object with a 'data' list"),
    ({"num_captions_per_audio": 1, "data": [{"id": "1", "caption": ["a", "b"]}]}, r"entry 1 \(id '1'\): 'caption'"),
])
def test_bad_json_names_the_file_and_entry(tmp_path, doc, message):
    folder = make_wavcaps(tmp_path, {"FreeSound": ["1"]})
    (folder / "json_files" / "FreeSound" / "fsd_final.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        WavCapsDataModule(root=str(tmp_path), sources=["FreeSound"]).split("train")


def test_truncated_json_and_bad_blacklists(tmp_path):
    folder = make_wavcaps(tmp_path, {"FreeSound": ["1"]})
    path = folder / "json_files" / "FreeSound" / "fsd_final.json"
    path.write_text(path.read_text()[:-10])
    with pytest.raises(DataError, match="fsd_final.json: not valid JSON"):
        read_wavcaps_json(path)
    (tmp_path / "bl.json").write_text(json.dumps({"VGGSound": ["x"]}))
    with pytest.raises(DataError, match="'AudioSet' and/or 'FreeSound'"):
        read_blacklist(tmp_path / "bl.json")
    (tmp_path / "bl.csv").write_text("name\nx\n")
    with pytest.raises(DataError, match=r"bl.csv: row 1 \(header\)"):
        read_blacklist(tmp_path / "bl.csv")
    with pytest.raises(DataError, match="not found"):
        read_blacklist(tmp_path / "absent.json")


def test_data_check_reads_wavcaps(tmp_path):
    from coattn.cli import main

    folder = make_wavcaps(tmp_path / "wc", {"FreeSound": ["1", "2"], "SoundBible": ["3"]})
    (folder / "Audio" / "FreeSound" / "2.flac").write_bytes(b"not audio")
    report = tmp_path / "check.json"
    assert main(["data-check", "wavcaps", str(folder), "--splits", "train", "--rates", "32000", "--report",
                 str(report), "--workers", "1"]) == 1  # an unreadable clip is an error
    found = json.loads(report.read_text())
    assert [f["file"] for f in found["splits"]["train"]["problems"]["unreadable"]] == ["FreeSound/2.flac"]
    exclude = report.with_name("check.exclude.txt")
    dm = WavCapsDataModule(root=str(folder), exclude_file=str(exclude))  # the usual way back into training
    assert dm.split("train").excluded == ["FreeSound/2.flac"]
