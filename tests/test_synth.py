"""coattn synth: layout, captions, determinism (tiny sets of 2 s clips: well under a second each)."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from coattn.tools.synth import EVENTS, SPLITS, main


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _synth(out: Path, seed: int = 0) -> None:
    assert main([str(out), "--seed", str(seed), "--n-train", "6", "--n-val", "3", "--n-eval", "3",
                 "--seconds", "2"]) == 0


def test_layout_audio_and_captions(tmp_path, capsys):
    _synth(tmp_path / "d")
    assert "12 clips" in capsys.readouterr().out  # the summary line
    root = tmp_path / "d"
    for split, n in zip(SPLITS, (6, 3, 3)):
        with open(root / f"clotho_captions_{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["file_name", *(f"caption_{k}" for k in range(1, 6))]
        assert len(rows) == n
        for row in rows:
            caps = [row[f"caption_{k}"] for k in range(1, 6)]
            assert len(set(caps)) == 5 and all(len(c) > 10 for c in caps)
            info = sf.info(str(root / split / row["file_name"]))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 88200, "PCM_16")
    assert not list(root.rglob(".*tmp*"))  # atomic writes leave no temporaries behind


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    _synth(tmp_path / "a", seed=3)
    _synth(tmp_path / "b", seed=3)
    _synth(tmp_path / "c", seed=4)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_validation_clips_do_not_depend_on_train_count(tmp_path):
    main([str(tmp_path / "a"), "--n-train", "2", "--n-val", "2", "--n-eval", "0", "--seconds", "1"])
    main([str(tmp_path / "b"), "--n-train", "5", "--n-val", "2", "--n-eval", "0", "--seconds", "1"])
    for name in ("validation/validation_00000.wav", "clotho_captions_validation.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_captions_describe_order_and_counts():
    from coattn.tools.synth import make_captions, make_scene, render

    rng = np.random.default_rng(0)
    texts = " ".join(" ".join(make_captions(make_scene(rng), rng)) for _ in range(200)).lower()
    for word in ("then", "followed by", "after", "twice", "two ", "three"):
        assert word in texts
    assert len(EVENTS) >= 8
    # Every event type is audible: clearly above the background in its own segment.
    for e in EVENTS:
        wave = render([(e, 1), (EVENTS[0] if e is not EVENTS[0] else EVENTS[1], 1)], 10.0, 16000, rng)
        # the event under test sits in the first half and np.abs(wave).max() <= 0.95 + 1e-6
        assert np.abs(wave[:80000]).max() > 0.2
