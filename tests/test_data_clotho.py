"""ClothoDataModule: the batch contract, eval coverage, real Clotho CSVs and real clips."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch

from coattn.tools.synth import main as synth
from data_modules import ClothoDataModule, fit_length, load_audio
from data_modules.clotho import read_clotho_csv
from data_modules.datasets import EpochSampler
from data_modules.splits import read_csv_rows

SHARED = Path(os.environ.get("COATTN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLOTHO = SHARED / "clotho"
needs_shared = pytest.mark.skipif(not CLOTHO.is_dir(), reason=f"real Clotho files not found under {SHARED}")
S = 480000  # 10 s at 48 kHz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clotho")
    synth([str(root), "--n-train", "6", "--n-val", "3", "--n-eval", "3", "--seconds", "2"])
    return root


def _check_batch(b: dict, train: bool) -> None:
    assert set(b) == {"audio", "clip_index", "fnames", "captions", "caption_clip", "valid"}
    B = b["audio"].shape[0]
    assert b["audio"].shape == (B, S) and b["audio"].dtype == torch.float32
    assert b["clip_index"].shape == (B,) and b["clip_index"].dtype == torch.long
    assert len(b["fnames"]) == B and all(isinstance(f, str) for f in b["fnames"])
    assert b["valid"].dtype == torch.bool and b["valid"].all()
    assert b["caption_clip"].dtype == torch.long and len(b["captions"]) == b["caption_clip"].shape[0]
    if train:
        assert torch.equal(b["caption_clip"], b["clip_index"])
    else:  # all captions of the batch's clips, in clip order
        assert set(b["caption_clip"].tolist()) == set(b["clip_index"].tolist())
        assert b["caption_clip"].tolist() == sorted(b["caption_clip"].tolist(), key=b["clip_index"].tolist().index)


def test_batch_contract_train_and_eval(tiny):
    dm = ClothoDataModule(str(tiny), batch_size=4, eval_batch_size=2)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 7  # 30 (clip, caption) items // 4, drop_last
    for b in train:
        _check_batch(b, train=True)
    # One epoch draws each (clip, caption) pair at most once.
    seen = [(c, t) for b in train for c, t in zip(b["clip_index"].tolist(), b["captions"])]
    assert len(set(seen)) == len(seen) == 28
    texts, clips = dm.split_captions("train")
    assert set(seen) <= set(zip(clips, texts)) and len(texts) == 30
    for stage, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                          ("predict", dm.predict_dataloader())):
        batches = list(loader)
        for b in batches:
            _check_batch(b, train=False)
        assert torch.cat([b["clip_index"] for b in batches]).tolist() == [0, 1, 2]  # each clip once, in order
        assert [f for b in batches for f in b["fnames"]] == dm.split_clips(stage)
        texts, clips = dm.split_captions(stage)
        assert [c for b in batches for c in b["captions"]] == texts and len(texts) == 15
        assert torch.cat([b["caption_clip"] for b in batches]).tolist() == clips
    assert dm.split_clips("predict")[0] == "evaluation_00000.wav"
    assert dm.skipped_clips == {"train": 0, "val": 0, "test": 0}


def test_train_clip_mode_and_seeded_order(tiny):
    a = ClothoDataModule(str(tiny), batch_size=2, train_items="clip", seed=5)
    b = ClothoDataModule(str(tiny), batch_size=2, train_items="clip", seed=5)
    ba, bb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert len(a.train_dataloader().dataset) == 6
    assert torch.equal(ba["audio"], bb["audio"]) and ba["captions"] == bb["captions"]
    c = ClothoDataModule(str(tiny), batch_size=2, train_items="clip", seed=6)
    assert [x["fnames"] for x in c.train_dataloader()] != [x["fnames"] for x in a.train_dataloader()]


def test_sampler_keeps_one_clips_captions_apart():
    groups = [[5 * c + k for k in range(5)] for c in range(40)]  # 40 clips x 5 captions
    s = EpochSampler(groups, batch_size=8, seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        order = [i for i, _ in s]
        assert sorted(order) == list(range(200))
        for start in range(0, 200, 8):  # every batch holds 8 different clips
            assert len({i // 5 for i in order[start:start + 8]}) == 8
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) == first  # resumable: the epoch alone fixes the order and the draws


def test_carves_validation_for_clotho_v1(tiny, tmp_path):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "development").symlink_to(tiny / "development")
    (v1 / "clotho_captions_development.csv").symlink_to(tiny / "clotho_captions_development.csv")
    dm = ClothoDataModule(str(v1), val_size=2)
    assert dm.carves_validation
    val, train = dm.split_clips("val"), dm.split_clips("train")
    assert len(val) == 2 and len(train) == 4 and not set(val) & set(train)
    assert ClothoDataModule(str(v1), val_size=2, seed=9).split_clips("val") == val  # not tied to the seed


def test_csv_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
                    b"a.wav,x,y,z,w,v\nb.wav,caf\xe9,y,z,w,v\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 3 is not valid UTF-8"):
        read_clotho_csv(bad)
    bad.write_text("file_name,caption_1,caption_2\na.wav,x,y\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 1 \(header\) lacks column\(s\) \['caption_3'"):
        read_clotho_csv(bad)
    bad.write_text('file_name,caption_1\n"a, b.wav","quoted, comma"\nc.wav\n')
    with pytest.raises(ValueError, match=r"bad\.csv: row ending at line 3 has fewer fields"):
        read_csv_rows(bad, ("file_name", "caption_1"))


def test_bad_clip_becomes_flagged_silence(tiny, tmp_path):
    root = tmp_path / "broken"
    (root / "evaluation").mkdir(parents=True)
    for i in range(3):
        (root / "evaluation" / f"evaluation_0000{i}.wav").write_bytes(
            (tiny / "evaluation" / f"evaluation_0000{i}.wav").read_bytes())
    (root / "evaluation" / "evaluation_00001.wav").write_bytes(b"RIFF....WAVEjunk")  # corrupt header
    (root / "clotho_captions_evaluation.csv").write_bytes((tiny / "clotho_captions_evaluation.csv").read_bytes())
    dm = ClothoDataModule(str(root), eval_batch_size=3)
    b = next(iter(dm.test_dataloader()))
    assert b["valid"].tolist() == [True, False, True]
    assert b["audio"][1].abs().sum() == 0 and b["audio"][0].abs().sum() > 0
    assert len(b["captions"]) == 15 and dm.skipped_clips["test"] == 1


@needs_shared
def test_parses_every_row_of_the_real_clotho_csvs():
    for split, n in (("development", 2893), ("evaluation", 1045)):
        rows = read_clotho_csv(CLOTHO / f"clotho_captions_{split}.csv")
        assert len(rows) == n and len({f for f, _, _ in rows}) == n
        assert all(len(caps) == 5 and all(c.strip() for c in caps) for _, caps, _ in rows)
    assert any("," in c for _, caps, _ in rows for c in caps)  # quoted commas survived


@needs_shared
def test_real_clips_through_the_module(tmp_path):
    names = sorted(p.name for p in (CLOTHO / "audio_sample").glob("*.wav"))
    assert len(names) == 7 and any(" " in n for n in names)
    rows = [r for r in read_clotho_csv(CLOTHO / "clotho_captions_evaluation.csv") if r[0] in names]
    with open(tmp_path / "eval.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        w.writerows([fname, *caps] for fname, caps, _ in rows)
    dm = ClothoDataModule(str(tmp_path), test_csv="eval.csv", test_audio_dir=str(CLOTHO / "audio_sample"),
                          eval_batch_size=4, eval_crop="centre")
    batches = list(dm.test_dataloader())
    assert [b["audio"].shape for b in batches] == [(4, S), (3, S)]
    assert sum(len(b["captions"]) for b in batches) == 35 and all(b["valid"].all() for b in batches)
    # 15-30 s at 44.1 kHz: the loader's windowed read equals resampling everything, then cropping.
    first = CLOTHO / "audio_sample" / batches[0]["fnames"][0]
    info = sf.info(str(first))
    assert info.samplerate == 44100 and 15 < info.duration < 30
    full = load_audio(first, 48000)
    assert abs(full.shape[0] - info.frames * 48000 / 44100) <= 1
    assert torch.allclose(batches[0]["audio"][0], fit_length(full, S, "centre"), atol=1e-6)
