"""coattn sounds / coattn.soundbank: phrases, skipping rules, the bank format, every input problem reported.

Real inputs: the tuxpaint-stamps-default .deb (the whole package, built once per session in 10-30 s;
skipped when the .deb is not on this machine) and the real Clotho clips of the shared data folder.
The rest builds tuxpaint-like trees of OGG files written here, so that the rules run everywhere.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coattn.soundbank import FIELDS, label_of, load_bank, phrase_from_description, phrase_from_name
from coattn.tools.sounds import main
from tests.conftest import SHARED_DATA

CLOTHO = SHARED_DATA / "clotho"


def _report(bank: Path) -> dict:
    return json.loads((bank / "report.json").read_text())


def _reasons(bank: Path) -> dict[str, str]:
    return {s["id"]: s["reason"] for s in _report(bank)["skipped"]}


def test_phrases_and_labels():
    assert phrase_from_description("A dog.", "dog") == "a dog"
    assert phrase_from_description("An electric kettle.", "kettle") == "an electric kettle"
    assert phrase_from_description("An hippopotamus.", "hippo") == "a hippopotamus"  # article by first letter
    assert phrase_from_description("A baby sheep (a lamb).", "sheep_lamb") == "a baby sheep"
    assert phrase_from_description("Big fireworks.", "fireworks") == "big fireworks"
    # sentences, digits, other punctuation: the file name
    toilet = "Remember to flush the toilet and wash your hands with soap!"
    assert phrase_from_description(toilet, "toilet") == "a toilet"
    assert phrase_from_description("We remember those who have died.", "final-roll-call") == "a final roll call"
    assert phrase_from_description("UB2006 “Penguin II” deep sea research vessel.", "bathyscape") == "a bathyscape"
    assert phrase_from_description("Hard candy—yum!", "hard_candy") == "a hard candy"
    assert phrase_from_description("“No U-Turn”.", "no_uturn") is None  # a quotation: the text of a sign
    assert phrase_from_name("chirping_birds") == "chirping birds" and phrase_from_name("rain") == "rain"
    assert phrase_from_name("Electric_guitar") == "an electric guitar" and phrase_from_name("sneezing") == "sneezing"
    assert label_of("a cow") == "cow" and label_of("the apollo lander") == "apollo lander"
    assert label_of("big fireworks") == "big fireworks"


def _ogg(path: Path, x: np.ndarray, sr: int = 22050) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, format="OGG", subtype="VORBIS")


def _tone(seconds: float, f: float, sr: int = 22050, lead: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t)
    return np.concatenate([np.zeros(int(lead * sr)), x, np.zeros(int(lead * sr))])  # silence to trim


@pytest.fixture
def fake_tux(tmp_path) -> Path:
    """A tuxpaint-layout tree: sounds, spoken descriptions, locales, symbols, a silent and a broken file."""
    st = tmp_path / "usr/share/tuxpaint/stamps"
    stamps = {"animals/dog": ("A dog.", _tone(0.8, 440)), "animals/cow": ("A cow.", _tone(1.0, 220)),
              "animals/cow_white": ("A cow.", _tone(1.2, 230)),
              "household/kettle": ("An electric kettle.", _tone(1, 880)),
              "animals/wombat": ("A wombat.", np.zeros(22050)), "symbols/math/1": ("One.", _tone(0.5, 300)),
              "town/flags/checkeredflag": ("A checkered flag.", _tone(1, 600)),
              "town/signs/stop": ("“Stop”.", _tone(1, 650)), "animals/click": ("A click.", _tone(0.02, 1000)),
              "animals/badger": ("A badger.", _tone(0.9, 500)), "animals/beaver": ("A beaver.", _tone(0.9, 500))}
    for name, (desc, x) in stamps.items():
        (st / name).parent.mkdir(parents=True, exist_ok=True)
        (st / f"{name}.txt").write_text(f"{desc}\nfr.utf8=Un truc.\n", encoding="utf-8")
        _ogg(st / f"{name}.ogg", x)
    _ogg(st / "animals/dog_desc.ogg", _tone(1, 300))  # spoken description
    _ogg(st / "animals/dog_desc_fr.ogg", _tone(1, 300))
    _ogg(st / "symbols/math/1_fr.ogg", _tone(0.5, 300))  # localised spoken variant
    (st / "animals/broken.txt").write_text("A broken thing.\n")
    (st / "animals/broken.ogg").write_bytes(b"OggS not really")
    return tmp_path


def test_build_fake_tree_reports_every_skip(fake_tux, tmp_path, capsys):
    bank = tmp_path / "bank"
    assert main(["build", str(bank), "--tuxpaint", str(fake_tux)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "kept 5 (4 labels), skipped 7" in line and "3 spoken/localised files ignored" in line, line
    reasons = _reasons(bank)
    assert reasons["animals-wombat"].startswith("silent")
    assert reasons["symbols-math-1"].startswith("spoken word")
    assert reasons["town-flags-checkeredflag"].startswith("not a sound source")
    assert reasons["town-signs-stop"].startswith("not a sound source: the description is a quotation")
    assert reasons["animals-broken"].startswith("unreadable")
    assert reasons["animals-click"].startswith("too short")
    assert reasons["animals-beaver"] == "duplicate: the same audio as animals-badger"
    assert _report(bank)["ignored_files"] == {"spoken description (<name>_desc*)": 2,
                                              "localised spoken variant (<name>_<locale>)": 1}
    sounds = {s.id: s for s in load_bank(bank)}
    assert sorted(sounds) == ["animals-badger", "animals-cow", "animals-cow-white", "animals-dog", "household-kettle"]
    assert sounds["household-kettle"].phrase == "an electric kettle" and sounds["animals-dog"].phrase == "a dog"
    assert sounds["animals-cow"].label == sounds["animals-cow-white"].label == "cow"
    with open(bank / "sounds.csv", newline="", encoding="utf-8") as f:
        assert tuple(csv.DictReader(f).fieldnames) == FIELDS
    dog = sounds["animals-dog"]
    info = sf.info(dog.path)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    x = dog.load()
    assert abs(len(x) / 44100 - 0.82) < 0.03  # 0.8 s tone + 2 x 10 ms pad: the 0.3 s silences are trimmed
    assert abs(float(np.abs(x).max()) - 10 ** (-1 / 20)) < 0.01  # peak-normalised to -1 dBFS
    assert abs(dog.seconds - len(x) / 44100) < 1e-3 and dog.category == "animals" and dog.source == "tuxpaint"
    assert len(dog.load(16000)) == pytest.approx(len(x) * 16000 / 44100, abs=2)
    # the same input gives the same bank, byte for byte
    assert main(["build", str(tmp_path / "bank2"), "--tuxpaint", str(fake_tux)]) == 0
    for name in ("sounds.csv", "audio/animals-dog.wav"):
        assert (bank / name).read_bytes() == (tmp_path / "bank2" / name).read_bytes()


def test_exclude_option(fake_tux, tmp_path):
    bank = tmp_path / "bank"
    assert main(["build", str(bank), "--tuxpaint", str(fake_tux), "--exclude", "household/*",
                 "--no-default-exclude"]) == 0
    reasons = _reasons(bank)
    assert reasons["household-kettle"] == "excluded by --exclude" and "town-flags-checkeredflag" not in reasons


def test_csv_source_problems_per_file(tmp_path, capsys):
    audio = tmp_path / "clips"
    audio.mkdir()
    sf.write(str(audio / "a.wav"), _tone(1, 440, 44100), 44100)
    sf.write(str(audio / "b.flac"), np.stack([_tone(1, 660, 48000)] * 2, 1), 48000)  # stereo, 48 kHz
    sf.write(str(audio / "c.wav"), _tone(1, 550, 44100), 44100)
    rows = [("a.wav", "A dog barks loudly in the yard at night.", "", "a barking dog"),
            ("b.flac", "An old bell.", "church bell", ""),
            ("c.wav", "A dog barks loudly in the yard at night.", "", ""),
            ("missing.wav", "A cat.", "", "")]
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "description", "label", "phrase"])
        w.writerows(rows)
    assert main(["build", str(tmp_path / "bank"), "--csv", str(tmp_path / "in.csv"), "--audio-dir", str(audio)]) == 0
    sounds = {s.id: s for s in load_bank(tmp_path / "bank")}
    assert sounds["a"].phrase == "a barking dog" and sounds["a"].label == "barking dog"
    assert sounds["b"].label == "church bell" and sounds["b"].phrase == "an old bell" and sounds["b"].source == "csv"
    reasons = _reasons(tmp_path / "bank")
    assert reasons.pop("missing") == "missing file" and reasons.pop("c").startswith("no usable phrase") and not reasons
    # a missing column is one clear line naming the file
    (tmp_path / "bad.csv").write_text("path,text\nx.wav,A dog.\n")
    from coattn.cli import main as cli

    capsys.readouterr()
    bad = ["sounds", "build", str(tmp_path / "bank3"), "--csv", str(tmp_path / "bad.csv"), "--audio-dir", "."]
    assert cli(bad) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(r"coattn: error: .*bad\.csv.*has no column file, description", err)


def test_esc50_and_fsd50k_layouts(tmp_path):
    esc = tmp_path / "ESC-50"
    (esc / "meta").mkdir(parents=True)
    (esc / "audio").mkdir()
    for i, (name, target, cat) in enumerate([("1-1-A-0.wav", 0, "dog"), ("1-2-A-10.wav", 10, "rain"),
                                             ("1-3-A-20.wav", 20, "crying_baby"), ("1-4-A-0.wav", 0, "dog")]):
        sf.write(str(esc / "audio" / name), _tone(1, 300 + 100 * i, 44100), 44100)
    (esc / "meta/esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                        "1-1-A-0.wav,1,0,dog,True,1,A\n1-2-A-10.wav,1,10,rain,True,2,A\n"
                                        "1-3-A-20.wav,1,20,crying_baby,False,3,A\n1-4-A-0.wav,1,0,dog,True,4,A\n"
                                        "1-5-A-0.wav,1,0,dog,True,5,A\n")
    assert main(["build", str(tmp_path / "b1"), "--esc50", str(esc), "--max-per-label", "1"]) == 0
    sounds = {s.id: s for s in load_bank(tmp_path / "b1")}
    assert {(s.label, s.phrase, s.category) for s in sounds.values()} == {
        ("dog", "a dog", "animals"), ("rain", "rain", "natural soundscapes"),
        ("crying baby", "a crying baby", "human non-speech")}
    assert sorted(_reasons(tmp_path / "b1").values()) == ["missing file", "over --max-per-label 1"]
    fsd = tmp_path / "FSD50K"
    (fsd / "FSD50K.ground_truth").mkdir(parents=True)
    (fsd / "FSD50K.dev_audio").mkdir()
    for i in (1, 2, 3):
        sf.write(str(fsd / "FSD50K.dev_audio" / f"{i}.wav"), _tone(1, 200 * i, 44100), 44100)
    (fsd / "FSD50K.ground_truth/dev.csv").write_text(
        'fname,labels,mids,split\n1,"Bark,Dog,Domestic_animals_and_pets,Animal","/m/05tny_,/m/0bt9lr",train\n'
        '2,"Male_speech_and_man_speaking,Speech,Human_voice","/m/1",train\n'
        '3,"Electric_guitar,Guitar,Music","/m/2",val\n')
    assert main(["build", str(tmp_path / "b2"), "--fsd50k", str(fsd)]) == 0
    sounds = {s.id: s for s in load_bank(tmp_path / "b2")}
    assert {(s.label, s.phrase) for s in sounds.values()} == {("bark", "a bark"),
                                                             ("electric guitar", "an electric guitar")}
    assert sounds["fsd50k-dev-1"].category == "Animal/Domestic_animals_and_pets/Dog"
    assert _reasons(tmp_path / "b2") == {"fsd50k-dev-2": "spoken word (a speech label)"}


def test_csv_source_on_real_clotho_clips(tmp_path):
    clips = sorted((CLOTHO / "audio_sample").glob("*.wav"))[:3]
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "description"])
        w.writerows([(c.name, "A recording.") for c in clips])
    assert main(["build", str(tmp_path / "bank"), "--csv", str(tmp_path / "in.csv"), "--audio-dir",
                 str(clips[0].parent), "--max-seconds", "5"]) == 0
    bank = load_bank(tmp_path / "bank")
    assert len(bank) == 3 and all(0.1 < s.seconds <= 5.0 for s in bank)  # long field recordings cut to 5 s


@pytest.mark.slow
def test_tuxpaint_package(tuxpaint_bank):
    report = _report(tuxpaint_bank)
    reasons = _reasons(tuxpaint_bank)
    bank = {s.id: s for s in load_bank(tuxpaint_bank)}
    # the package's silent recordings (peak 0 after decoding) are reported, not kept
    silent = {k for k, r in reasons.items() if r.startswith("silent")}
    assert silent >= {"animals-mammals-giraffe", "animals-birds-nandou"}
    spoken = {k for k, r in reasons.items() if r.startswith("spoken word")}
    assert "symbols-math-1" in spoken and all(k.startswith("symbols-") for k in spoken) and len(spoken) >= 20
    assert reasons["town-flags-checkeredflag"].startswith("not a sound source")
    assert reasons["military-final-roll-call"].startswith("not a sound source")
    assert report["ignored_files"]["spoken description (<name>_desc*)"] > 1000
    assert bank["animals-mammals-dogs-dog"].phrase == "a dog"
    assert bank["household-kettle"].phrase == "an electric kettle"
    assert bank["animals-mammals-bovines-cow"].label == bank["animals-mammals-bovines-cow-white"].label == "cow"
    assert bank["household-toilet"].phrase == "a toilet"  # a long sentence: the stamp's name
    assert not any(s.id.startswith("symbols") for s in bank.values()) and len(bank) >= 80
    assert all(s.sample_rate == 44100 and s.seconds >= 0.1 for s in bank.values())
    assert report["kept"] == len(bank)


def test_fetch_without_apt_get_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import coattn.tools.sounds as sounds

    monkeypatch.setattr(sounds.shutil, "which", lambda name: None)
    args = ["build", str(tmp_path / "bank"), "--tuxpaint", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 1
    assert re.fullmatch(r"coattn: error: apt-get is not available.*--tuxpaint PATH\n", capsys.readouterr().err)
    # a .deb already in the cache folder is used without apt-get (and, without dpkg-deb, Python's reader)
    (tmp_path / "cache" / "tuxpaint-stamps-default_1.0_all.deb").write_bytes(b"not an archive")
    assert main(args) == 1
    assert "is not a Debian package" in capsys.readouterr().err


def test_fetch_updates_empty_package_lists_once_then_downloads(tmp_path, monkeypatch):
    """A fresh machine has no apt package lists: `apt-get download` fails until `apt-get update` ran (as root)."""
    import subprocess as sp

    import coattn.tools.sounds as sounds

    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"] and ["apt-get", "update"] in calls:
            (Path(cwd) / "tuxpaint-stamps-default_2.0_all.deb").write_bytes(b"x")
            return sp.CompletedProcess(cmd, 0, "", "")
        return sp.CompletedProcess(cmd, 0 if cmd[1] == "update" else 100, "", "E: Unable to locate package")

    monkeypatch.setattr(sounds.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(sounds.subprocess, "run", fake_run)
    monkeypatch.setattr(sounds.os, "geteuid", lambda: 0)
    deb = sounds.fetch_tuxpaint(tmp_path, log=lambda m: None)
    assert deb.name == "tuxpaint-stamps-default_2.0_all.deb"
    assert calls == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]
