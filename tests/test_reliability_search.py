"""``coattn search`` heals its index and refuses bad inputs in one line (issue 11, items 14 and 15).

The index is damaged the way disks and copies damage files (a truncated shard, a keys file or
metadata holding ``[]`` or binary bytes); the next search warns once per damaged file, rebuilds
what it lost and ranks exactly as before; the search after that finds a healthy index.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from coattn.cli import main
from tests.reliability_helpers import tiny_fit_args

QUERY = "a beep then a dog bark"


@pytest.fixture(scope="module")
def checkpoint(tiny_clotho, tmp_path_factory):
    """A checkpoint of `coattn fit` on the tiny set (one step)."""
    run = tmp_path_factory.mktemp("search_ckpt")
    cwd = os.getcwd()
    os.chdir(run)
    try:
        assert main(["fit", *tiny_fit_args(tiny_clotho, steps=1)]) == 0
    finally:
        os.chdir(cwd)
    return run / "runs/demo_scratch/checkpoints/last.ckpt"


@pytest.fixture
def sounds(tiny_clotho, tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for w in sorted((tiny_clotho / "evaluation").glob("*.wav")):
        shutil.copy(w, folder / w.name)
    return folder


def search(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(["search", *args])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def ranked(capsys, checkpoint, folder, index) -> dict:
    rc, out, err = search(capsys, QUERY, "--ckpt_path", str(checkpoint), "--audio-dir", str(folder),
                          "--index-dir", str(index), "--json")
    assert rc == 0, err
    return json.loads(out)


def _damage(index, case: str) -> list:
    """Damage every index file the case names; returns them."""
    files = [p for p in index.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if case == "truncated_shard":
        hit = [p for p in files if p.suffix != ".json"]
        for p in hit:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        hit = [p for p in files if p.suffix == ".json"]
        for p in hit:
            p.write_bytes(b"[]" if case == "empty_list" else bytes(range(256)) * 4)
    assert hit
    return hit


# ---- 14. a damaged index heals ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated_shard", "empty_list", "binary"])
def test_damaged_index_warns_once_per_file_and_rebuilds(case, checkpoint, sounds, tmp_path, capsys, caplog):
    index = tmp_path / "index"
    first = ranked(capsys, checkpoint, sounds, index)
    hit = _damage(index, case)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = ranked(capsys, checkpoint, sounds, index)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [r[2] for r in again["queries"][0]["results"]] == [r[2] for r in first["queries"][0]["results"]]
    np.testing.assert_allclose([r[1] for r in again["queries"][0]["results"]],
                               [r[1] for r in first["queries"][0]["results"]], atol=1e-5)
    for p in hit:  # one warning naming each damaged file (a shard's files: one warning for the shard)
        assert sum(p.name.split(".")[0] in w for w in warnings) == 1, (p.name, warnings)
    assert again["index"]["files"] == 4
    healed = ranked(capsys, checkpoint, sounds, index)  # the index is whole again: nothing to rebuild
    assert healed["index"]["encoded"] == 0 and healed["index"]["reused"] == 4


# ---- 15. bad checkpoints, formats, queries ------------------------------------------------------
@pytest.mark.parametrize("case", ["truncated", "text", "json"])
def test_bad_checkpoint_is_one_line(case, checkpoint, sounds, tmp_path, capsys):
    bad = tmp_path / f"{case}.ckpt"
    if case == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:4096])
    else:
        bad.write_text("hello\n" if case == "text" else json.dumps({"state_dict": {}}))
    rc, out, err = search(capsys, QUERY, "--ckpt_path", str(bad), "--audio-dir", str(sounds),
                          "--index-dir", str(tmp_path / "index"))
    lines = err.strip().splitlines()
    assert rc != 0 and "Traceback" not in err and len(lines) == 1 and str(bad) in lines[0], err
    assert ("truncated" if case == "truncated" else "not a torch checkpoint") in lines[0]


@pytest.mark.slow
def test_mp3_files_are_indexed(checkpoint, sounds, tmp_path, capsys):
    wav = sorted(sounds.glob("*.wav"))[0]
    data, sr = sf.read(wav)
    sf.write(sounds / "clip.mp3", data, sr, format="MP3")
    out = ranked(capsys, checkpoint, sounds, tmp_path / "index")
    assert out["index"]["files"] == 5 and out["index"]["unreadable"] == 0
    assert "clip.mp3" in [r[2] for r in out["queries"][0]["results"]]


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_is_refused(query, checkpoint, sounds, tmp_path, capsys):
    rc, out, err = search(capsys, query, "--ckpt_path", str(checkpoint), "--audio-dir", str(sounds),
                          "--index-dir", str(tmp_path / "index"))
    assert rc == 2 and "query 1 of 1 is empty" in err and not out
