"""Caption files and dataset folders that used to lose clips silently or crash without naming the file
(issue 11, items 4, 10, 11, 13, 16): the data modules and ``coattn data-check`` on each case."""
from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coattn.cli import main
from tests.test_bad_inputs import GOOD, SR, _clotho, _dm, _tone, _with_good

CAPS = "c2,c3,c4,c5"


def _data_check(root: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "check.json"
    rc = main(["data-check", "clotho", str(root), "--report", str(report), "--workers", "1", *extra])
    return rc, json.loads(report.read_text())


def _train_csv(root: Path, text: str) -> Path:
    """A development caption file with exactly ``text`` (the other splits stay as ``_clotho`` wrote them)."""
    path = root / "clotho_captions_development.csv"
    path.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n" + text, encoding="utf-8")
    return path


def _clips(root: Path, *names: str) -> None:
    for n in names:
        sf.write(root / "development" / n, _tone(1.0), SR)


# ---- 4. an unterminated quote swallows the next row --------------------------------------------
def test_unterminated_quote_is_an_error_naming_the_line(tmp_path, capsys):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    _clips(tmp_path, "a.wav", "b.wav")
    # line 3 opens a quote it never closes; line 4's quoted caption closes it: b.wav vanishes into a.wav's caption
    _train_csv(tmp_path, f"{GOOD},one,{CAPS}\na.wav,\"a dog barks,{CAPS}\nb.wav,\"rain, on a roof\",{CAPS}\n")
    with pytest.raises(ValueError, match=r"clotho_captions_development\.csv: the row starting at line 3 .*"
                                         r"unterminated quote.* swallows line 4"):
        _dm(tmp_path).split("train")
    capsys.readouterr()
    rc, report = _data_check(tmp_path, tmp_path, "--splits", "train")
    assert rc == 1 and "unterminated quote" in report["splits"]["train"]["fatal"]
    assert "1 errors, 0 warnings" in capsys.readouterr().out


def test_multiline_caption_without_a_swallowed_row_is_read(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    _clips(tmp_path, "a.wav")
    _train_csv(tmp_path, f"{GOOD},one,{CAPS}\na.wav,\"a dog barks\nthen a cat\",{CAPS}\n")
    split = _dm(tmp_path).split("train")
    assert split.fnames == [GOOD, "a.wav"] and split.captions[1][0] == "a dog barks\nthen a cat"


# ---- 10. a caption over the csv module's field limit ------------------------------------------
def test_caption_over_the_csv_field_limit_names_file_and_row(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    _train_csv(tmp_path, f"{GOOD},one,{CAPS}\n{GOOD},{'x' * 200_000},{CAPS}\n")  # csv's limit: 131,072
    with pytest.raises(ValueError, match=r"clotho_captions_development\.csv: row starting at line 3: "
                                         r"field larger than field limit"):
        _dm(tmp_path).split("train")
    rc, report = _data_check(tmp_path, tmp_path, "--splits", "train")
    assert rc == 1 and "clotho_captions_development.csv: row starting at line 3" in report["splits"]["train"]["fatal"]


# ---- 11. a missing validation caption file ---------------------------------------------------
def test_missing_validation_csv_is_named(tiny_clotho, tmp_path):
    root = tmp_path / "clotho"
    root.mkdir()
    for name in ("development", "evaluation"):
        os.symlink(tiny_clotho / name, root / name)
    for name in ("development", "evaluation"):
        (root / f"clotho_captions_{name}.csv").write_bytes((tiny_clotho / f"clotho_captions_{name}.csv").read_bytes())
    dm = _dm(root)
    with pytest.raises(ValueError, match=r"no validation caption file .*clotho_captions_validation\.csv.*val_size=200 "
                                         r"clips carved out of the 12.*leaving none for training"):
        dm.setup("fit")


# ---- 13. what coattn data-check finds ---------------------------------------------------------
def test_data_check_header_only_csv_is_an_error(tmp_path, capsys):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    _train_csv(tmp_path, "")
    rc, report = _data_check(tmp_path, tmp_path, "--splits", "train")
    assert rc == 1
    assert [f["detail"] for f in report["splits"]["train"]["problems"]["no_rows"]] == [
        "the caption file has a header but no rows: this split is empty"]
    assert "1 errors" in capsys.readouterr().out


def test_data_check_shared_captions_out_of_range_and_directories(tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    _clips(tmp_path, "a.wav", "b.wav")
    loud = _tone(1.0) * 5e5 / 0.3  # a float WAV with peak 5e5 (samples stored as 16-bit integers in floats)
    sf.write(tmp_path / "development" / "loud.wav", loud, SR, subtype="FLOAT")
    (tmp_path / "development" / "folder.wav").mkdir()
    _train_csv(tmp_path, f"{GOOD},one,{CAPS}\na.wav,a dog barks,x2,x3,x4,x5\nb.wav,a dog barks,y2,y3,y4,y5\n"
                         f"loud.wav,l1,l2,l3,l4,l5\nfolder.wav,f1,f2,f3,f4,f5\n")
    rc, report = _data_check(tmp_path, tmp_path, "--splits", "train")
    problems = report["splits"]["train"]["problems"]
    assert rc == 0  # warnings only
    shared = {f["detail"].split(" describes")[0]: f["detail"] for f in problems["shared_captions"]}
    assert "describes 2 clips (e.g. ['a.wav', 'b.wav'])" in shared["'a dog barks'"]
    assert [(f["file"], f["detail"][:10]) for f in problems["out_of_range"]] == [("loud.wav", "peak 5e+05")]
    assert [(f["file"], f["detail"]) for f in problems["not_a_file"]] == [("folder.wav",
                                                                          "a directory, not an audio file")]
    assert "folder.wav" not in [f["file"] for f in problems.get("missing", [])]


@pytest.mark.parametrize("case", ["nfd", "case", "trailing_space"])
def test_data_check_offers_the_file_a_name_almost_matches(case, tmp_path):
    (tmp_path / "development").mkdir()
    _clotho(tmp_path, _with_good(tmp_path))
    listed, on_disk, how = {
        "nfd": ("café.wav", unicodedata.normalize("NFD", "café.wav"), "Unicode normalisation (on disk: NFD)"),
        "case": ("Dog.WAV", "dog.wav", "case"),
        "trailing_space": ("rain.wav ", "rain.wav", "leading/trailing spaces"),
    }[case]
    _clips(tmp_path, on_disk)
    _train_csv(tmp_path, f"{GOOD},one,{CAPS}\n\"{listed}\",{CAPS},c6\n")
    rc, report = _data_check(tmp_path, tmp_path, "--splits", "train")
    found = report["splits"]["train"]["problems"]["name_mismatch"]
    assert [f["file"] for f in found] == [listed] and found[0]["line"] == 3
    assert found[0]["detail"] == f"differs only by {how}: {on_disk!r}"


# ---- 16. per-file symlinks into a shared pool ---------------------------------------------------
def _pool_dataset(tmp_path: Path) -> Path:
    """A dataset whose development clips are per-file links into a pool outside it."""
    pool, root = tmp_path / "pool", tmp_path / "data"
    pool.mkdir()
    (root / "development").mkdir(parents=True)
    names = [f"clip{i}.wav" for i in range(3)]
    for n in names:
        sf.write(pool / n, _tone(1.0), SR)
        os.symlink(pool / n, root / "development" / n)
    _clotho(root, [{"file_name": n} for n in names])
    return root


def test_per_file_links_are_rejected_saying_why_and_how(tmp_path, caplog):
    root = _pool_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"3 rejected \(3 symlinks to files outside the audio folder \(e\.g\. "
                                         r"file 'clip0\.wav' is a symlink to .*pool/clip0\.wav.*\); if you trust "
                                         r"these links, set data\.init_args\.follow_symlinks=true"):
        _dm(root).split("train")
    split = _dm(root, follow_symlinks=True).split("train")  # the explicit option
    assert split.fnames == ["clip0.wav", "clip1.wav", "clip2.wav"] and not split.rejected
    # one rejected among good clips: the warning says which rule, with the option
    sf.write(root / "development" / GOOD, _tone(1.0), SR)
    _clotho(root, [{"file_name": GOOD}, {"file_name": "clip0.wav"}])
    with caplog.at_level(logging.WARNING, logger="coattn.data"):
        assert _dm(root).split("train").rejected == ["clip0.wav"]
    assert "1 rejected (1 symlinks to files outside the audio folder" in caplog.text
    assert "follow_symlinks=true" in caplog.text


def test_a_linked_folder_works_without_the_option(tmp_path):
    _pool_dataset(tmp_path)
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(tmp_path / "pool", linked / "development")  # the folder is the link, the files are real
    _clotho(linked, [{"file_name": f"clip{i}.wav"} for i in range(3)])
    assert _dm(linked).split("train").fnames == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert np.isclose(sf.info(str(linked / "development" / "clip0.wav")).duration, 1.0)
