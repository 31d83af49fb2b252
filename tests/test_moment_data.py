"""The Lighthouse-layout loader (released layouts of Clotho-Moment and CASTELLA), its one-line errors, and
`coattn synth-moments` on a real (tiny) sound bank."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from coattn.cli import main
from coattn.errors import DataError
from data_modules.moments import MomentDataModule, collate_train, MomentTrainDataset, read_moments
from tests.moment_helpers import make_bank


@pytest.fixture(scope="module")
def moment_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moments")
    bank = make_bank(root / "bank")
    out = root / "set"
    assert main(["synth-moments", str(bank), str(out), "--seconds", "30", "--n-train", "4", "--n-val", "2",
                 "--n-test", "2", "--sample-rate", "16000", "--seed", "0"]) == 0
    return out


def _write(tmp_path: Path, lines: list, vids=("v1",), seconds=60.0) -> Path:
    (tmp_path / "audio").mkdir(exist_ok=True)
    for v in vids:
        sf.write(tmp_path / "audio" / f"{v}.wav", np.zeros(int(seconds * 8000), np.float32), 8000)
    f = tmp_path / "x.jsonl"
    f.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return f


def test_released_layouts_load(tmp_path):
    # one line each as Lighthouse releases Clotho-Moment (extra fg_dB, int duration) and CASTELLA (several
    # windows, one ending 1 s past the duration)
    clotho = {"qid": "32694", "query": "A toilet flushes.", "duration": 60, "vid": "Singapore_0.0_60.0",
              "relevant_windows": [[41.1, 48.1]], "fg_dB": 0.74}
    castella = {"qid": "sC_i_y7QS1U_1", "query": "A man is talking", "duration": 59, "vid": "sC_i",
                "relevant_windows": [[4, 9], [18, 60]]}
    f = _write(tmp_path, [clotho, castella], vids=("Singapore_0.0_60.0", "sC_i"))
    qs = read_moments(f, tmp_path / "audio")
    assert [q.qid for q in qs] == ["32694", "sC_i_y7QS1U_1"]
    assert qs[0].windows == ((41.1, 48.1),) and qs[0].duration == 60.0
    assert qs[1].windows == ((4.0, 9.0), (18.0, 59.0))  # clipped to the duration (tolerance)


@pytest.mark.parametrize("line, words", [
    ({"qid": "a", "query": "q", "vid": "v1", "duration": 60, "relevant_windows": [[50, 70]]}, "outside the recording"),
    ({"qid": "a", "query": "q", "vid": "v1", "duration": 60, "relevant_windows": [[5, 3]]}, "ends before"),
    ({"qid": "a", "query": "q", "vid": "nope", "duration": 60, "relevant_windows": [[1, 3]]}, "nope.wav not found"),
    ({"qid": "a", "query": "q", "vid": "v1", "duration": 60}, "['relevant_windows'] missing"),
    ({"qid": "a", "query": "q", "vid": "v1", "duration": 60, "relevant_windows": []}, "is empty"),
    ("{not json", "not JSON"),
])
def test_bad_lines_give_one_clear_line(tmp_path, line, words):
    good = {"qid": "ok", "query": "q", "vid": "v1", "duration": 60, "relevant_windows": [[1, 2]]}
    f = _write(tmp_path, [good, line])
    with pytest.raises(DataError) as err:
        read_moments(f, tmp_path / "audio")
    msg = str(err.value)
    assert "\n" not in msg and f"{f}: line 2" in msg and words in msg, msg


def test_bad_file_is_a_one_line_cli_error(tmp_path, capsys):
    f = _write(tmp_path, [{"qid": "a", "query": "q", "vid": "v1", "duration": 60, "relevant_windows": [[5, 3]]}])
    dm = MomentDataModule(train_file=str(f), test_file=str(f), audio_dir=str(tmp_path / "audio"))
    with pytest.raises(DataError, match="line 1 \\(qid a\\)"):
        dm.setup("test")


def test_synth_moments_writes_the_lighthouse_layout(moment_set):
    meta = json.loads((moment_set / "synth_moments.json").read_text())
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        qs = read_moments(moment_set / f"{split}.jsonl", moment_set / "audio")
        assert len({q.vid for q in qs}) == n
        for q in qs:
            x, sr = sf.read(q.audio)
            assert sr == 16000 and len(x) == 30 * 16000 and q.duration == 30.0
            events = meta["recordings"][q.vid]
            (s, e), = q.windows
            if ", then " in q.query:  # a sequence: first event's start to the next event's end
                a, b = q.query.split(", then ")
                i = [ev["phrase"] for ev in events].index(a)
                assert events[i + 1]["phrase"] == b and (s, e) == (events[i]["start"], events[i + 1]["end"])
            else:
                ev = next(ev for ev in events if ev["phrase"] == q.query)
                assert (s, e) == (ev["start"], ev["end"])
                # the event is really there: louder inside its window than the background around it
                inside = np.abs(x[int(s * sr):int(e * sr)]).max()
                assert inside > 4 * np.sqrt(np.mean(x[: int(0.05 * sr)] ** 2) + 1e-12) or s < 0.05
    labels = [ev["label"] for ev in events]  # a recording never holds two events of one label
    assert len(labels) == len(set(labels))


def test_training_crops_hold_their_windows(moment_set):
    qs = read_moments(moment_set / "train.jsonl", moment_set / "audio")
    ds = MomentTrainDataset(qs, 16000, 16000 * 5, positive_prob=1.0, seed=0)
    batch = collate_train([ds[i] for i in range(len(ds))])
    assert batch["audio"].shape == (len(qs), 80000)
    w = batch["windows"]
    real = w[..., 0] >= 0
    assert real.any(1).all()  # positive_prob 1: every crop holds part of a window
    assert (w[real][:, 1] > w[real][:, 0]).all() and (w[real] <= 5.0).all()


def test_fit_test_localize_on_the_lighthouse_layout(moment_set, tmp_path, monkeypatch, capsys):
    """`coattn fit` then `coattn test` on the moment config (tiny random towers), then `coattn localize`."""
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(Path(__file__).resolve().parents[1] / "experiments/moments/synth.yaml"),
            f"--data.init_args.train_file={moment_set / 'train.jsonl'}",
            f"--data.init_args.val_file={moment_set / 'val.jsonl'}",
            f"--data.init_args.test_file={moment_set / 'test.jsonl'}",
            f"--data.init_args.audio_dir={moment_set / 'audio'}", "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--model.cascade.init_args.depth=1", "--model.cascade.init_args.width=32",
            "--model.cascade.init_args.ffn_dim=64", "--model.embed_dim=32",
            "--model.text_encoder.init_args.hidden_size=32", "--model.text_encoder.init_args.num_layers=1",
            "--model.text_encoder.init_args.intermediate_size=64", "--model.text_encoder.init_args.vocab_size=300"]
    assert main(["fit", *args]) == 0
    ckpt = tmp_path / "runs/moments/checkpoints/best.ckpt"
    assert ckpt.is_file()
    capsys.readouterr()
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
    printed = capsys.readouterr().out
    assert "| moment head (co-attention) |" in printed and "| dual encoder, sliding spans |" in printed
    report = json.loads((tmp_path / "runs/moments/results/test/metrics.json").read_text())
    m = report["metrics"]
    n_test = len(read_moments(moment_set / "test.jsonl", moment_set / "audio"))
    assert report["queries"] == n_test and m["moment/queries"] == n_test
    for k in ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95"):
        assert 0.0 <= m[f"moment/{k}"] <= 1.0 and 0.0 <= m[f"baseline_dual_sliding/moment/{k}"] <= 1.0
    preds = [json.loads(x) for x in (tmp_path / "runs/moments/results/test/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n_test and all(1 <= len(p["pred_relevant_windows"]) <= 10 for p in preds)
    wav = moment_set / "audio" / f"{preds[0]['vid']}.wav"
    assert main(["localize", "--model", str(tmp_path / "runs/moments"), str(wav), "a dog", "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("rank") and len(out) == 5 and out[2].split()[0] == "1"
