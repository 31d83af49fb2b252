"""`coattn probe`, the command: it must score exactly what `coattn test`'s probe scores (same clips, same
padding and masks), and its applicability count on the real Clotho captions is the README's."""
from __future__ import annotations

import json

import pytest

from coattn.cli import main
from tests.conftest import SHARED_DATA
from tests.test_cli import tiny_args


def test_probe_command_matches_the_test_time_probe_with_zero_padding(demo_run, tiny_clotho, tmp_path,
                                                                      monkeypatch, capsys):
    # the tiny clips are 2 s in a 10 s window: with pad zeros most frames are masked, so a probe that
    # read the clips differently from `coattn test` (repeat-padded, unmasked) would disagree with it
    run, ckpt = demo_run
    monkeypatch.chdir(tmp_path)
    args = [*tiny_args(tiny_clotho), "--data.init_args.pad=zeros"]
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
    at_test = json.loads((tmp_path / "runs/demo_scratch/results/test/metrics.json").read_text())["extra"]["probe"]
    capsys.readouterr()
    assert main(["probe", *args, "--ckpt_path", str(ckpt), "--out", str(tmp_path / "probe"), "--items"]) == 0
    out = capsys.readouterr()
    assert "order probe (n=" in out.out and "args parameter" not in out.err
    probed = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probed["split"] == "test" and probed["variants"].endswith("synth_metadata.json")
    assert set(probed["probe"]) == set(at_test) and at_test["order"]["n"] > 0
    for kind, r in at_test.items():
        for key, value in r.items():
            assert probed["probe"][kind][key] == pytest.approx(value, abs=1e-6), (kind, key)
    # --items: one line per item with both scores of each branch; its wins give back the accuracies
    items = [json.loads(line) for line in (tmp_path / "probe" / "probe_items.jsonl").read_text().splitlines()]
    assert len(items) == sum(r["n"] for r in at_test.values())
    for kind, r in at_test.items():
        mine = [it for it in items if it["kind"] == kind]
        assert all(it["true"] != it["variant"] for it in mine)
        for branch in set(r) - {"n"}:
            pairs = [(it[f"{branch}_true"], it[f"{branch}_variant"]) for it in mine]
            won = [(t > v) + 0.5 * (t == v) for t, v in pairs]
            assert sum(won) / len(mine) == pytest.approx(r[branch], abs=1e-6), (kind, branch)


def test_probe_applicability_on_the_real_clotho_evaluation_captions(capsys):
    csv_path = SHARED_DATA / "clotho" / "clotho_captions_evaluation.csv"
    assert main(["probe", "--captions", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "5225" in out.replace(",", "") and "624" in out and "217" in out, out


@pytest.mark.parametrize("pad", ["zeros", "repeat"])
def test_probe_reads_clips_with_the_data_modules_padding_and_masks(demo_run, tiny_clotho, pad):
    # 2 s clips in a 10 s window of 32 frames: with pad zeros only ceil(32 * 2 / 10) = 7 frames are real
    import torch

    from coattn.model import CoAttnModel
    from coattn.tools.probe import split_audio_features
    from data_modules import ClothoDataModule

    model = CoAttnModel.from_checkpoint(demo_run[1])
    dm = ClothoDataModule(root=str(tiny_clotho), pad=pad, num_workers=0)
    split = dm.split("test")
    feats = split_audio_features(model, dm.clip_dataset("test"), batch_size=3)
    real = feats.mask.sum(1)
    assert len(real) == len(split)
    assert (real == (7 if pad == "zeros" else 32)).all(), real
    if pad == "zeros":  # and what the tower saw was the clip, then silence, as `coattn test` feeds it
        from coattn.audio import load_clip

        wave, n = load_clip(split.paths[0], dm.sample_rate, dm.num_samples, dm.eval_crop, pad="zeros",
                            return_length=True)
        with torch.no_grad():
            ref = model.encode_audio(wave[None], torch.tensor([n]))
        torch.testing.assert_close(feats.states[0], ref.states[0])
