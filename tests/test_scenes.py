"""coattn synth --sounds: Clotho layout, timings that match the audio, order twins, splits, seeds.

A bank of 7 labels (two with several recordings) built here from tones and noise bursts through
``coattn.soundbank.build_bank``, and (slow) the real tuxpaint bank of tests/conftest.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coattn.soundbank import Candidate, bank_digest, build_bank, load_bank
from coattn.tools.scenes import CROP_TRAIN, SPLITS
from coattn.tools.synth import main as synth

SR = 44100


def _sound(kind: str, seconds: float, f: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "tone":
        return 0.6 * np.sin(2 * np.pi * f * t)
    if kind == "burst":  # noise gated at 4 Hz: a sound with quiet stretches inside it, like a real bark
        return 0.6 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 4 * t) > -0.3)
    return 0.6 * np.sin(2 * np.pi * (f + 300 * np.sin(2 * np.pi * 3 * t)) * t)  # warble


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tonebank")
    rng = np.random.default_rng(0)
    specs = [("dog", "burst", 0.9, 0), ("dog", "burst", 1.3, 0), ("cow", "tone", 1.5, 220), ("cow", "tone", 2.0, 240),
             ("cow", "tone", 1.1, 260), ("bell", "tone", 0.7, 1500), ("kettle", "warble", 3.0, 900),
             ("drum", "burst", 0.4, 0), ("owl", "warble", 1.2, 500), ("saw", "burst", 2.5, 0)]
    cands = []
    for i, (label, kind, sec, f) in enumerate(specs):
        path = root / "in" / f"{label}{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(str(path), _sound(kind, sec, f, rng), SR)
        cands.append(Candidate(id=f"{label}-{i}", path=str(path), description=f"A {label}.", category="test",
                               source="csv", phrase=("an " if label[0] in "aeiou" else "a ") + label))
    report = build_bank(cands, root / "bank", log=lambda m: None)
    assert report["kept"] == len(specs)
    return root / "bank"


def _make(bank: Path, out: Path, *extra: str, n=(12, 6, 6), seconds="5") -> dict:
    assert synth(["--sounds", str(bank), str(out), "--n-train", str(n[0]), "--n-val", str(n[1]),
                  "--n-eval", str(n[2]), "--seconds", seconds, *extra]) == 0
    return json.loads((out / "synth_metadata.json").read_text())


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def check_timings(out: Path, meta: dict, min_ratio: float) -> None:
    """Every occurrence window is clearly louder than the clip outside all windows, and the events
    are in time order without overlaps."""
    for key, m in meta.items():
        x, sr = sf.read(str(out / key), dtype="float32")
        inside = np.zeros(len(x), bool)
        last = 0.0
        for e in m["events"]:
            assert len(e["occurrences"]) == e["count"]
            for on, off in e["occurrences"]:
                assert last <= on < off <= len(x) / sr + 1e-3
                last = off
                inside[int(on * sr):int(off * sr)] = True
        background = _rms(x[~inside])
        assert 0 < background < 0.02, key
        for e in m["events"]:
            for on, off in e["occurrences"]:
                ratio = _rms(x[int(on * sr):int(off * sr)]) / background
                assert ratio > min_ratio, (key, e["sound"], on, off, ratio)


def test_layout_captions_metadata_and_timings(bank, tmp_path, capsys):
    out = tmp_path / "d"
    meta = _make(bank, out)
    assert "24 clips" in capsys.readouterr().out.splitlines()[-1]
    labels = {s.id: s.label for s in load_bank(bank)}
    for split, n in zip(SPLITS, (12, 6, 6)):
        with open(out / f"clotho_captions_{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["file_name", *(f"caption_{k}" for k in range(1, 6))] and len(rows) == n
        for row in rows:
            caps = [row[f"caption_{k}"] for k in range(1, 6)]
            assert len(set(caps)) == 5
            info = sf.info(str(out / split / row["file_name"]))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 5 * 44100, "PCM_16")
            m = meta[f"{split}/{row['file_name']}"]
            assert [c["text"] for c in m["captions"]] == caps
            events = m["events"]
            assert 2 <= len(events) <= 3 and len({e["type"] for e in events}) == len(events)  # distinct labels
            assert all(labels[e["sound"]] == e["type"] and 1 <= e["count"] <= 3 for e in events)
            for c in m["captions"]:  # every caption names every event; the probes are other texts
                assert all(e["type"] in c["text"].lower() for e in events)
                assert c["reversed"] != c["text"] and c["count_changed"] not in (None, c["text"])
            assert m["sounds_bank"]["hash"] == bank_digest(bank)
    counts = [e["count"] for m in meta.values() for e in m["events"]]
    assert 1 in counts and max(counts) > 1  # repeats happen, and not always
    check_timings(out, meta, min_ratio=6.0)


def test_twins_are_exact_reversals_in_every_split(bank, tmp_path):
    meta = _make(bank, tmp_path / "d", "--twin-share", "0.4", n=(20, 10, 5))
    for split, n in zip(SPLITS, (20, 10, 5)):
        keys = [k for k in meta if k.startswith(split + "/")]
        twins = {k: meta[k]["twin"] for k in keys if meta[k]["twin"]}
        assert len(twins) == 2 * round(n * 0.4 / 2)  # 8, 4, 2 clips (4, 2, 1 pairs)
        for a, b in twins.items():
            assert b.startswith(split + "/") and meta[b]["twin"] == a  # same split, symmetric
            ea, eb = meta[a]["events"], meta[b]["events"]
            assert [(e["sound"], e["count"], e["crop"]) for e in ea] == [(e["sound"], e["count"], e["crop"])
                                                                          for e in eb][::-1]
            assert [e["type"] for e in ea] != [e["type"] for e in eb]
    meta0 = _make(bank, tmp_path / "e", "--twin-share", "0", n=(6, 2, 2))
    assert not any(m["twin"] for m in meta0.values())


def test_same_seed_same_bytes(bank, tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        _make(bank, tmp_path / name, "--seed", seed, n=(4, 2, 2), seconds="3")
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b
    assert all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_more_training_scenes_leave_validation_and_test_byte_identical(bank, tmp_path):
    """`--n-train` (make demo's REAL_TRAIN_SCENES) changes only development/: a model trained on more scenes is
    scored on the very clips and captions of the smaller root (docs/ablations.md, round 5)."""
    def held_out(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
                if p.is_file() and "development" not in p.name and p.name != "synth_metadata.json"}

    small = _make(bank, tmp_path / "small", n=(4, 3, 3), seconds="3")
    large = _make(bank, tmp_path / "large", n=(16, 3, 3), seconds="3")
    assert held_out(tmp_path / "small") == held_out(tmp_path / "large")
    assert len(held_out(tmp_path / "small")) == 3 + 3 + 2  # the wavs and both caption files
    assert {k: v for k, v in small.items() if not k.startswith("development/")} == \
        {k: v for k, v in large.items() if not k.startswith("development/")}
    assert sum(k.startswith("development/") for k in large) == 16


def _sounds_by_side(meta: dict) -> tuple[dict, dict]:
    train, held = {}, {}
    for key, m in meta.items():
        for e in m["events"]:
            (train if key.startswith("development/") else held).setdefault(e["type"], []).append(e)
    return train, held


def test_split_by_recording_keeps_recordings_apart(bank, tmp_path):
    meta = _make(bank, tmp_path / "d", "--split-by", "recording", n=(40, 20, 20), seconds="4")
    train, held = _sounds_by_side(meta)
    for label in ("dog", "cow"):  # the labels with several recordings
        a, b = {e["sound"] for e in train[label]}, {e["sound"] for e in held[label]}
        assert a and b and not a & b, (label, a, b)
    assert {e["sound"] for e in train["bell"]} == {e["sound"] for e in held["bell"]}  # one recording: shared


def test_split_by_crop_keeps_parts_apart(bank, tmp_path):
    meta = _make(bank, tmp_path / "d", "--split-by", "crop", n=(20, 10, 10), seconds="4")
    seconds = {s.id: s.seconds for s in load_bank(bank)}
    train, held = _sounds_by_side(meta)
    for events, side in ((train, "train"), (held, "held")):
        for e in (e for es in events.values() for e in es):
            cut = seconds[e["sound"]] * CROP_TRAIN
            start, end = e["crop"]
            assert (end <= cut + 1e-3) if side == "train" else (start >= cut - 1e-3), (side, e)


def test_options_need_sounds_and_bank_must_exist(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synth([str(tmp_path / "x"), "--twin-share", "0.2"])
    assert "--twin-share and --split-by need --sounds BANK" in capsys.readouterr().err
    assert synth(["--sounds", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("coattn: error: no sound bank at")


@pytest.mark.slow
def test_scenes_from_real_tuxpaint_recordings(tuxpaint_bank, tmp_path):
    out = tmp_path / "d"
    meta = _make(tuxpaint_bank, out, "--twin-share", "0.5", n=(8, 4, 4), seconds="10")
    check_timings(out, meta, min_ratio=4.0)
    assert sum(1 for m in meta.values() if m["twin"]) == 8
