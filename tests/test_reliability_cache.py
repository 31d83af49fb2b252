"""Stored features are checked, clips replaced or deleted are noticed (issue 22, findings 2 and 6): an entry
whose bytes changed is rebuilt with one warning, a clip replaced by another of the same size and mtime
is encoded again, constant (all-zero) entries are warned about, `coattn serve` leaves out clips deleted
after it started."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from coattn.features import SequenceFeatures
from coattn.store import FeatureStore
from tests.test_reliability_search import QUERY, checkpoint, ranked, sounds  # noqa: F401 (fixtures)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _scores(result) -> dict[str, float]:
    return {f: s for _, s, f in result["queries"][0]["results"]}


# ---- 2. damaged contents, a replaced clip, constant features ------------------------------------------
@pytest.mark.slow
def test_damaged_entry_bytes_are_rebuilt_with_one_warning(checkpoint, sounds, tmp_path, capsys, caplog):
    index = tmp_path / "index"
    first = ranked(capsys, checkpoint, sounds, index)
    [states] = list(index.rglob("*.states.npy"))
    raw = bytearray(states.read_bytes())
    raw[-64:] = bytes(64)  # the last entry's last values: same size, valid .npy, other numbers
    states.write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = ranked(capsys, checkpoint, sounds, index)
    damaged = [w for w in _warnings(caplog) if "damaged" in w]
    assert len(damaged) == 1 and "1 entries damaged" in damaged[0], _warnings(caplog)
    assert again["index"]["encoded"] == 1
    np.testing.assert_allclose(sorted(_scores(again).values()), sorted(_scores(first).values()), atol=1e-5)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        healed = ranked(capsys, checkpoint, sounds, index)  # the rebuilt entry wins over the damaged row
    assert healed["index"]["encoded"] == 0 and not [w for w in _warnings(caplog) if "damaged" in w]


@pytest.mark.slow
def test_clip_replaced_with_same_size_and_mtime_is_encoded_again(checkpoint, sounds, tmp_path, capsys):
    index = tmp_path / "index"
    first = _scores(ranked(capsys, checkpoint, sounds, index))
    a, b = sorted(sounds.glob("*.wav"))[:2]
    assert a.stat().st_size == b.stat().st_size and first[a.name] != first[b.name]
    st = b.stat()
    shutil.copyfile(a, b)  # b now holds a's audio, with b's size and mtime (as `cp -p`, `rsync -t` leave it)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = ranked(capsys, checkpoint, sounds, index)
    assert again["index"]["encoded"] == 1
    assert _scores(again)[b.name] == pytest.approx(first[a.name], abs=1e-5)


def test_constant_features_are_warned_about(tmp_path, caplog):
    store = FeatureStore(tmp_path / "store", {"kind": "test"})
    feats = SequenceFeatures(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 8))
    feats.states[1] = 0.0
    store.write(["a", "b", "c"], feats)
    with caplog.at_level(logging.WARNING):
        assert FeatureStore(tmp_path / "store").verify(["a", "b", "c"]) == []
    [w] = _warnings(caplog)
    assert "1 of 3 entries hold constant features (every value 0, e.g. key b)" in w


# ---- 6. `coattn serve`: clips deleted after it started ---------------------------------------------------
@pytest.mark.slow
def test_serve_leaves_out_clips_deleted_after_it_started(checkpoint, sounds, tmp_path, caplog):
    from coattn.tools.search import build_index, load_model
    from coattn.tools.serve import ranked_hits

    model = load_model(str(checkpoint), None, "cpu")
    index = build_index(model, sounds, tmp_path / "index", 4, "cpu")
    before, _ = ranked_hits(model, index, QUERY, 2, "exact", 4, "cpu", maps=False, audio_dir=sounds)
    top = before["results"][0][2]
    (sounds / top).unlink()
    gone: set[str] = set()
    with caplog.at_level(logging.WARNING):
        after, _ = ranked_hits(model, index, QUERY, 2, "exact", 4, "cpu", maps=False, audio_dir=sounds, gone=gone)
        again, _ = ranked_hits(model, index, QUERY, 2, "exact", 4, "cpu", maps=False, audio_dir=sounds, gone=gone)
    assert [f for _, _, f in after["results"]][0] == before["results"][1][2]  # the next clip moved up
    assert len(after["results"]) == 2 and top not in [f for _, _, f in after["results"]]
    assert [r for r, _, _ in after["results"]] == [1, 2] and again["results"] == after["results"]
    warned = [w for w in _warnings(caplog) if top in w]
    assert len(warned) == 1 and "was deleted after the index was built" in warned[0]
