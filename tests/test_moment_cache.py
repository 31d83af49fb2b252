"""The pretrained regime of moment retrieval: the index/query feature cache, crops cut from the index, the
dual-features stream (FiLM, no co-attention), init_from + freeze_dual (zero-shot dual baseline), span pooling
as the tower pools, and `coattn fit/test` reading cached features."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from coattn.audio import load_audio
from coattn.errors import UserFacingError
from coattn.moments.cache import IndexCache, crop_frames
from coattn.moments.model import MomentModel
from coattn.train.moments import load_initial, rebase_windows
from tests.test_moment_model import tiny_model


@pytest.fixture()
def wav(tmp_path) -> Path:
    mm = MomentModel(tiny_model())
    g = torch.Generator().manual_seed(1)
    p = tmp_path / "rec.wav"
    sf.write(p, (torch.randn(int(23.7 * mm.sample_rate), generator=g) * 0.05).numpy(), mm.sample_rate)
    return p


def test_index_cache_builds_once_and_reads_what_index_gives(tmp_path, wav):
    mm = MomentModel(tiny_model(), index_hop=7.0).eval()
    cache = IndexCache(tmp_path / "cache", mm, load_audio)
    cache.build([wav, wav], ["a dog", "a fox, then a pig", "a dog"])
    assert cache.stats["recordings_built"] == 1 and cache.stats["queries_built"] == 2
    direct = mm.index(load_audio(wav, mm.sample_rate))
    got = cache.index(wav)
    assert torch.equal(got.frames, direct.frames) and got.duration == pytest.approx(23.7, abs=1e-4)
    with torch.no_grad():
        want = mm.model.encode_text(["a fox, then a pig", "a dog"])
    t = cache.text(["a fox, then a pig", "a dog"])
    for i in range(2):  # the real tokens (the tower may pad to max_length; the cache to the longest query)
        n = int(want.mask[i].sum())
        assert int(t.mask[i].sum()) == n and torch.allclose(t.states[i, :n], want.states[i, :n], atol=1e-6)
    assert torch.allclose(t.pooled, want.pooled, atol=1e-6)
    # a new process (new cache object) reads the store: nothing is rebuilt
    again = IndexCache(tmp_path / "cache", mm, load_audio)
    again.build([wav], ["a dog"])
    assert again.stats["recordings_built"] == 0 and again.stats["queries_built"] == 0
    assert torch.equal(again.index(wav).frames, direct.frames)
    # another hop is another index (meta key); a rewritten file another entry
    assert IndexCache(tmp_path / "cache", MomentModel(mm.model, index_hop=5.0), load_audio).build([wav], [])[
        "recordings_built"] == 1
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert again.build([wav], [])["recordings_built"] == 1


def test_hop_sets_the_crops_and_the_index_ends_at_the_last_covered_frame(wav):
    mm = MomentModel(tiny_model(), index_hop=9.0).eval()
    assert mm.hop_samples == 9 * mm.sample_rate
    index = mm.index(load_audio(wav, mm.sample_rate))
    assert index.frames.shape[0] == round(23.7 / mm.frame_seconds)
    assert (index.frames.abs().sum(1) > 0).all()  # no frame left uncovered by the sliding tower


def test_crops_from_the_index_and_windows_rebased():
    from coattn.moments.model import RecordingIndex

    index = RecordingIndex(torch.arange(20.0)[:, None].expand(20, 3), 0.5, 10.0)
    frames, mask, t0 = crop_frames(index, 3.1, 8)  # nearest frame to 3.1 s: 6
    assert t0 == 3.0 and frames[:, 0].tolist() == list(range(6, 14)) and mask.all()
    frames, mask, t0 = crop_frames(index, 9.0, 8)  # flush with the end
    assert t0 == 6.0 and frames[-1, 0] == 19
    short = RecordingIndex(torch.ones(5, 3), 0.5, 2.5)
    frames, mask, t0 = crop_frames(short, 0.0, 8)
    assert mask.tolist() == [True] * 5 + [False] * 3 and (frames[5:] == 0).all()
    w = torch.tensor([[[2.0, 5.0], [9.0, 12.0], [-1.0, -1.0]]])
    out = rebase_windows(w, torch.tensor([3.0]), 4.0)
    assert out[0].tolist() == [[0.0, 2.0], [-1.0, -1.0], [-1.0, -1.0]]


def test_dual_stream_needs_no_cascade_and_ignores_padding():
    from coattn.coattention import CoAttentionCascade

    m = tiny_model()
    m.cascade = CoAttentionCascade(kind="none")
    mm = MomentModel(m, stream="dual", stream_width=16, top_k=4).eval()
    with torch.no_grad():
        a = mm.model.encode_audio(torch.randn(2, mm.clip_samples) * 0.05)
        t = mm.model.encode_text(["a dog", "a fox"])
        logits, off = mm.pair_outputs(a, t, torch.arange(2), torch.arange(2)[:, None])
        assert logits.shape == (2, a.states.shape[1]) and off.shape == (2, a.states.shape[1], 2)
        padded = torch.nn.functional.pad(a.states, (0, 0, 0, 3))
        mask = torch.nn.functional.pad(a.mask, (0, 3))
        x = mm.film(padded, mask, t.pooled)[:, :a.states.shape[1]]
        assert torch.allclose(x, mm.film(a.states, a.mask, t.pooled), atol=1e-5)
        index = mm.index(torch.randn(int(14.2 * mm.sample_rate)) * 0.05)
        out = mm.localize(index, "a dog")
    assert 1 <= len(out) <= 4 and (out[:, 1] > out[:, 0]).all()
    with pytest.raises(ValueError, match="stream"):
        MomentModel(m, stream="film")


def test_sliding_spans_pool_as_the_tower_pools():
    from coattn.moments.model import RecordingIndex

    m = tiny_model().eval()
    m.dual_pooling = "encoder"
    m.audio_encoder.frame_pooling = "max"
    mm = MomentModel(m, dual_spans=(1.0,), top_k=1000, nms_iou=1.0)
    fs = mm.frame_seconds
    index = RecordingIndex(torch.randn(40, m.audio_encoder.out_dim), fs, 40 * fs)
    n = max(1, round(1.0 / fs))
    with torch.no_grad():
        out = mm.dual_sliding(index, "a dog")
        q = m.dual_embed_text(m.encode_text(["a dog"]))[0]
        first = (m.dual_audio(index.frames[:n].amax(0, keepdim=True)) @ q).item()
    row = out[(out[:, 0] == 0)]
    assert len(out) == 40 - n + 1 and row[0, 2].item() == pytest.approx(first, abs=1e-5)
    assert torch.equal(mm.pool_frames(index.frames[None, :n], torch.ones(1, n, dtype=torch.bool))[0],
                       index.frames[:n].amax(0))


def test_init_from_loads_the_dual_heads_and_freeze_keeps_them(tmp_path):
    from coattn.train.moments import MomentRetrieval

    src = tiny_model()
    torch.nn.init.constant_(src.dual_audio.proj.weight, 0.25)
    ckpt = tmp_path / "dual.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items() if k.startswith("dual_")}}, ckpt)
    dst = tiny_model()
    loaded = load_initial(dst, str(ckpt))
    assert "dual_audio.proj.weight" in loaded and (dst.dual_audio.proj.weight == 0.25).all()
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.dual_audio.proj.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(UserFacingError, match="dual heads do not fit"):
        load_initial(tiny_model(), str(bad))
    with pytest.raises(UserFacingError, match="no such checkpoint"):
        load_initial(tiny_model(), str(tmp_path / "none.ckpt"))
    m = tiny_model()
    lm = MomentRetrieval(m.audio_encoder, m.text_encoder, m.cascade, embed_dim=32, init_from=str(ckpt),
                         freeze_dual=True, prior="dual")
    # eval from construction: Lightning 2 starts fitting in the modes it finds (it never calls .train()) and
    # restores them after validation by setting .training; a frozen dual in train mode once let the prior's
    # training steps move its BatchNorm statistics, and with them the zero-shot baseline row
    dual = lm.mm.model.dual_audio
    assert not dual.training and not lm.mm.model.dual_text.training
    lm.train()
    assert not any(p.requires_grad for p in dual.parameters()) and not dual.training
    assert lm.mm.head.training and (dual.proj.weight == 0.25).all()


def test_fit_test_read_cached_features(tmp_path, monkeypatch, capsys):
    """`coattn fit` + `coattn test` with model.feature_cache on frozen (tiny) towers, both streams."""
    from coattn.cli import main
    from tests.moment_helpers import make_bank

    bank = make_bank(tmp_path / "bank")
    data = tmp_path / "set"
    assert main(["synth-moments", str(bank), str(data), "--seconds", "24", "--n-train", "3", "--n-val", "1",
                 "--n-test", "1", "--sample-rate", "16000", "--seed", "0"]) == 0
    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).resolve().parents[1] / "experiments/moments/synth.yaml"
    common = ["--config", str(cfg), f"--data.init_args.train_file={data / 'train.jsonl'}",
              f"--data.init_args.val_file={data / 'val.jsonl'}", f"--data.init_args.test_file={data / 'test.jsonl'}",
              f"--data.init_args.audio_dir={data / 'audio'}", "--data.init_args.batch_size=4",
              "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
              "--model.audio_encoder.init_args.freeze=true", "--model.text_encoder.init_args.freeze=true",
              "--model.feature_cache=cache", "--model.index_hop=8.0",
              "--model.cascade.init_args.depth=1", "--model.cascade.init_args.width=32",
              "--model.cascade.init_args.ffn_dim=64", "--model.embed_dim=32", "--model.stream_width=32",
              "--model.text_encoder.init_args.hidden_size=32", "--model.text_encoder.init_args.num_layers=1",
              "--model.text_encoder.init_args.intermediate_size=64", "--model.text_encoder.init_args.vocab_size=300"]
    ckpt = tmp_path / "runs/moments/checkpoints/best.ckpt"
    for stream, row in (("cascade", "| moment head (co-attention) |"), ("dual", "| moment head (dual features, FiLM) |")):
        args = [*common, f"--model.stream={stream}"]
        assert main(["fit", *args]) == 0
        err = capsys.readouterr().err
        assert "feature cache cache:" in err
        assert main(["test", *args, f"--ckpt_path={ckpt}"]) == 0
        out = capsys.readouterr().out
        assert row in out
        report = json.loads((tmp_path / "runs/moments/results/test/metrics.json").read_text())
        assert report["stream"] == stream and report["queries"] == 3
    # the towers ran once per recording: 5 recordings in the index store, whatever the runs
    stores = list((tmp_path / "cache" / "index").iterdir())
    assert len(stores) == 1
    keys = [k for f in stores[0].glob("*.keys.json") for k in json.loads(f.read_text())]
    assert len(keys) == len(set(keys)) == 5
    # export the (dual-stream) moment checkpoint; localize reads the folder as it reads the checkpoint
    folder = tmp_path / "exported"
    assert main(["export", "--ckpt_path", str(ckpt), str(folder)]) == 0
    assert (folder / "moment.json").is_file() and (folder / "moment.safetensors").is_file()
    wav = next((data / "audio").glob("test_*.wav"))
    capsys.readouterr()
    outs = []
    for model in (str(ckpt), str(folder)):
        assert main(["localize", "--model", model, str(wav), "a dog", "--top-k", "3"]) == 0
        outs.append(capsys.readouterr().out.splitlines()[1:])
    assert outs[0] == outs[1] and outs[0][0].split()[-1] == "window" and len(outs[0]) == 4
    assert " - " in outs[0][1] and outs[0][1].endswith(" s)")  # m:ss.s - m:ss.s (length s)


def test_summarize_prints_mean_std_and_ratios(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs/moments/summarize.py"
    spec = importlib.util.spec_from_file_location("summarize", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    keys = ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95")
    for variant, head in (("coattn", [0.4, 0.6]), ("dual_head", [0.2, 0.2])):
        for seed, h in enumerate(head):
            f = tmp_path / variant / f"seed{seed}" / "results" / "test" / "metrics.json"
            f.parent.mkdir(parents=True)
            m = {f"moment/{k}": h for k in keys} | {f"baseline_dual_sliding/moment/{k}": 0.25 for k in keys}
            f.write_text(json.dumps({"metrics": m}))
    assert mod.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| co-attention head | 50.00 +- 14.14 |" in out
    assert "| dual features + same head (FiLM) | 20.00 +- 0.00 |" in out
    assert "| zero-shot dual, sliding spans | 25.00 +- 0.00 |" in out
    assert "| co-attention head | 2.00x |" in out and "| dual features + same head (FiLM) | 0.80x |" in out
