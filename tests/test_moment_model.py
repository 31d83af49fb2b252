"""The moment head's targets and loss, windows/NMS/stitching, and MomentModel on a tiny random model."""
from __future__ import annotations

import pytest
import torch

from coattn.moments.head import MomentHead, frame_targets, moment_loss
from coattn.moments.windows import crop_starts, span_means, span_proposals, stitch, temporal_nms


def tiny_model():
    from coattn.coattention import CoAttentionCascade
    from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
    from coattn.model import CoAttnModel

    torch.manual_seed(0)
    text = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                           max_length=16)
    text.fit_tokenizer(["a dog", "a fox", "a pig", "a dog, then a fox", "a horse", "a bee", "a frog"] * 3)
    audio = ClapAudioEncoder(config="HTSAT-mini", spec_augment=False, frozen_norm=True, drop_path_rate=0.0)
    cascade = CoAttentionCascade(kind="iterating", depth=1, width=32, heads=2, ffn_dim=64, dropout=0.0,
                                 positions="relative")
    return CoAttnModel(audio, text, cascade, embed_dim=32)


def test_crop_starts_cover_the_recording_and_end_flush():
    assert crop_starts(5, 10, 5) == [0]
    assert crop_starts(30, 10, 5) == [0, 5, 10, 15, 20]
    assert crop_starts(33, 10, 5) == [0, 5, 10, 15, 20, 23]


def test_stitch_averages_overlaps():
    chunks = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])[..., None]
    out = stitch(chunks, [0, 2], 6)[:, 0]
    assert out.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


def test_nms_keeps_the_best_and_drops_overlaps():
    w = torch.tensor([[0.0, 10.0, 0.5], [1.0, 10.0, 0.9], [20.0, 25.0, 0.7], [0.0, 9.0, 0.8]], dtype=torch.float64)
    kept = temporal_nms(w, iou_threshold=0.7, max_keep=10)
    assert kept[:, 2].tolist() == [0.9, 0.7]
    assert temporal_nms(w, iou_threshold=0.95, max_keep=2)[:, 2].tolist() == [0.9, 0.8]


def test_span_means_are_the_mean_of_their_frames():
    f = torch.randn(12, 3)
    spans = span_proposals(12, [1, 4])
    assert len(spans) == 12 + 9
    assert torch.allclose(span_means(f, spans)[14], f[2:6].mean(0), atol=1e-6)


def test_frame_targets_and_loss():
    # crop of 4 frames of 1 s; window [1.0, 3.0): frames with centres 1.5 and 2.5 are inside
    labels, off = frame_targets(torch.tensor([[[1.0, 3.0], [-1.0, -1.0]]]), num_frames=4, frame_seconds=1.0)
    assert labels.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert off[0, 1].tolist() == [0.5, 1.5] and off[0, 2].tolist() == [1.5, 0.5] and off[0, 0].tolist() == [0, 0]
    logits = torch.tensor([[-9.0, 9.0, 9.0, -9.0]])
    perfect = moment_loss(logits, off / 1.0, labels, off, 1.0, 4.0)
    assert perfect["boundary"] == 0 and perfect["relevance"] < 1e-3
    head = MomentHead(8)
    z, o = head(torch.randn(2, 5, 8))
    assert z.shape == (2, 5) and o.shape == (2, 5, 2) and (o >= 0).all()


def test_pair_frames_pool_to_pair_vectors():
    model = tiny_model().eval()
    with torch.no_grad():
        a = model.encode_audio(torch.randn(2, model.audio_encoder.clip_samples) * 0.1)
        t = model.encode_text(["a dog", "a fox, then a pig"])
        text, audio = model.prepare_text(t), model.prepare_audio(a)
        stage = model.cascade.clip_stage(audio, torch.arange(2))
        rows, inv = torch.arange(2), torch.arange(2).expand(2, 2)
        _, pooled = model.cascade.pair_vectors(text, rows, stage, inv)
        frames = model.cascade.pair_frames(text, rows, stage, inv)
        again = model.cascade.audio_pool(frames, stage.mask[inv.reshape(-1)]).view(2, 2, -1)
    assert torch.allclose(pooled, again, atol=1e-6)


def test_localize_a_long_recording():
    from coattn.moments.model import MomentModel

    mm = MomentModel(tiny_model(), top_k=5).eval()
    wave = torch.randn(int(25.3 * mm.sample_rate)) * 0.05
    index = mm.index(wave)
    assert index.frame_seconds == pytest.approx(10 / 32)
    assert index.frames.shape[0] == round(25.3 / (10 / 32)) and index.duration == pytest.approx(25.3)
    for out in (mm.localize(index, "a dog"), mm.dual_sliding(index, "a dog")):
        assert 1 <= len(out) <= 5 and out.shape[1] == 3
        assert (out[:, 0] >= 0).all() and (out[:, 1] <= 25.3 + 1e-6).all() and (out[:, 1] > out[:, 0]).all()
        assert (out[:-1, 2] >= out[1:, 2]).all()  # ranked
    with pytest.raises(ValueError, match="iterating"):
        from coattn.coattention import CoAttentionCascade
        m = tiny_model()
        m.cascade = CoAttentionCascade(kind="none")
        MomentModel(m)


def test_localize_in_process_leaves_grad_mode_on(tmp_path, monkeypatch, capsys):
    """`coattn localize` called from Python (a notebook, the test suite) must not switch autograd off for the
    caller: it once did, and every later training step in the process failed with "does not require grad"."""
    import torch

    from coattn.tools import localize

    class Tiny:
        sample_rate = 8000

        def index(self, wave):
            return type("I", (), {"duration": 1.0})()

        def localize(self, index, query, k):
            assert not torch.is_grad_enabled()
            return torch.tensor([[0.0, 0.5, 0.9]])

    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf
    sf.write(wav, np.zeros(8000, dtype=np.float32), 8000)
    monkeypatch.setattr(localize, "load_moment_checkpoint", lambda path: Tiny())
    assert localize.main(["--model", "x", str(wav), "a dog"]) == 0
    assert torch.is_grad_enabled()
    assert "0.50" in capsys.readouterr().out


def _nms_reference(windows, thr, k):
    """The first round's NMS (the full N x N IoU matrix), to check the row-by-row version against."""
    from coattn.moments.metrics import iou_cross

    windows = windows[torch.sort(windows[:, 2], descending=True, stable=True).indices]
    iou = iou_cross(windows[:, :2], windows[:, :2])
    alive, keep = torch.ones(len(windows), dtype=torch.bool), []
    for i in range(len(windows)):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == k:
            break
        alive &= ~(iou[i] > thr)
    return windows[keep]


def test_nms_row_by_row_equals_the_matrix_version():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        s = torch.randint(0, 30, (60,), generator=g).double()
        e = s + torch.randint(1, 12, (60,), generator=g).double()
        score = torch.randint(0, 8, (60,), generator=g).double()  # many ties: the stable order must hold
        w = torch.stack([s, e, score], 1)
        for thr, k in ((0.7, 10), (0.3, 5), (1.0, 60)):
            assert torch.equal(temporal_nms(w, thr, k), _nms_reference(w, thr, k))


def test_decode_spans_finds_the_maximum_sum_run():
    from coattn.moments.windows import decode_spans

    # frames 0.5 s apart; relevance positive exactly on frames 4..9 -> the window [2.0, 5.0) s
    z = torch.full((20,), -3.0, dtype=torch.float64)
    z[4:10] = 2.0
    out = decode_spans(z, 0.5, 10.0, iou_threshold=0.7, max_keep=5)
    assert out[0, :2].tolist() == [2.0, 5.0] and out[0, 2] == pytest.approx(12.0)
    assert (out[:-1, 2] >= out[1:, 2]).all() and len(out) == 5
    # random logits: the top score is the brute-force maximum subarray sum; max_frames caps the length
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        z = torch.randn(40, generator=g, dtype=torch.float64)
        best = max(z[a:b].sum().item() for a in range(40) for b in range(a + 1, 41))
        assert decode_spans(z, 1.0, 40.0)[0, 2].item() == pytest.approx(best)
        capped = decode_spans(z, 1.0, 40.0, max_frames=3)
        assert ((capped[:, 1] - capped[:, 0]) <= 3).all()
        assert capped[0, 2].item() == pytest.approx(max(z[a:b].sum().item() for a in range(40)
                                                        for b in range(a + 1, min(a + 3, 40) + 1)))
    # the last window ends at the recording's duration, never past it
    assert decode_spans(torch.ones(7, dtype=torch.float64), 1.5, 10.0)[0, :2].tolist() == [0.0, 10.0]


def test_dual_prior_is_the_dual_frame_similarity_and_training_matches_inference():
    """prior: dual with the head's output zeroed gives exactly a * cos(dual_audio(pooled frames), dual_text(q)),
    and the training path (pair_outputs on a crop) gives the index path's logits for the same frames."""
    from coattn.features import SequenceFeatures
    from coattn.moments.model import MomentModel, RecordingIndex

    mm = MomentModel(tiny_model(), prior="dual", prior_window=1.0, prior_scale=7.0).eval()
    m = mm.model
    t = mm.num_frames
    frames = torch.randn(t, m.audio_encoder.out_dim)
    index = RecordingIndex(frames, mm.frame_seconds, t * mm.frame_seconds)
    with torch.no_grad():
        last = mm.head.mlp[-1]
        last.weight.zero_()
        last.bias.zero_()
        feats = m.encode_text(["a dog"])
        logits, _ = mm.frame_logits(index, feats)
        k = max(1, round(1.0 / mm.frame_seconds)) | 1
        x = torch.nn.functional.pad(frames.T[None], (k // 2, k // 2))[0]  # mean pooling for HTS-AT, no pad counted
        cnt = torch.nn.functional.pad(torch.ones(1, t), (k // 2, k // 2))[0]
        pooled = torch.stack([x[:, i:i + k].sum(1) / cnt[i:i + k].sum() for i in range(t)])
        want = 7.0 * (m.dual_audio(pooled) @ m.dual_embed_text(feats)[0])
        assert torch.allclose(logits, want, atol=1e-5)
        # training path: the same frames as a crop of a batch, with the head as trained
        torch.nn.init.normal_(last.weight)
        index_logits, _ = mm.frame_logits(index, feats)
        crop = SequenceFeatures(frames[None], torch.ones(1, t, dtype=torch.bool), frames.mean(0, keepdim=True))
        idx = torch.zeros(1, dtype=torch.long)
        train_logits, _ = mm.pair_outputs(crop, feats, idx, idx[:, None])
    assert torch.allclose(train_logits[0], index_logits, atol=1e-4)
    with pytest.raises(ValueError, match="prior"):
        MomentModel(tiny_model(), prior="clap")
    with pytest.raises(ValueError, match="decode"):
        MomentModel(tiny_model(), decode="detr")


def test_checkpoints_without_the_decode_key_keep_their_decoder():
    from coattn.train.moments import build_moment_model

    hp = {"audio_encoder": {"class_path": "coattn.encoders.ClapAudioEncoder",
                            "init_args": {"config": "HTSAT-mini", "spec_augment": False}},
          "text_encoder": {"class_path": "coattn.encoders.TinyTextEncoder",
                           "init_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                                         "vocab_size": 300}},
          "cascade": {"class_path": "coattn.coattention.CoAttentionCascade",
                      "init_args": {"kind": "iterating", "depth": 1, "width": 32, "heads": 2, "ffn_dim": 64}},
          "embed_dim": 32}
    assert build_moment_model(hp).decode == "frames" and build_moment_model(hp).prior == "none"
    assert build_moment_model(hp | {"decode": "spans", "prior": "dual"}).decode == "spans"


def test_context_longer_than_the_tower_window_is_one_attention_span():
    """model.context: the cascade sees `context` seconds at once; on an index no longer than that, evaluation is
    one chunk and equals the training path on the same frames (one crop of context_frames)."""
    from coattn.features import SequenceFeatures
    from coattn.moments.model import MomentModel, RecordingIndex

    mm = MomentModel(tiny_model(), context=25.0).eval()
    n = mm.context_frames
    assert n == round(25.0 / mm.frame_seconds) and n > mm.num_frames
    frames = torch.randn(n, mm.model.audio_encoder.out_dim)
    index = RecordingIndex(frames, mm.frame_seconds, n * mm.frame_seconds)
    with torch.no_grad():
        feats = mm.model.encode_text(["a dog, then a fox"])
        logits, _ = mm.frame_logits(index, feats)
        crop = SequenceFeatures(frames[None], torch.ones(1, n, dtype=torch.bool), frames.mean(0, keepdim=True))
        idx = torch.zeros(1, dtype=torch.long)
        train_logits, _ = mm.pair_outputs(crop, feats, idx, idx[:, None])
        assert torch.allclose(train_logits[0], logits, atol=1e-4)
        # the default context (the tower's window) chunks the same index: another function of the frames
        short = MomentModel(mm.model, context=None).eval()
        short.head.load_state_dict(mm.head.state_dict())
        assert not torch.allclose(short.frame_logits(index, feats)[0], logits, atol=1e-3)
    with pytest.raises(ValueError, match="context"):
        MomentModel(tiny_model(), context=0.0)


def test_a_long_context_without_the_feature_cache_is_one_clear_error():
    from coattn.errors import UserFacingError
    from coattn.train.moments import MomentRetrieval

    m = tiny_model()
    with pytest.raises(UserFacingError, match="model.context 60.0 s is longer than the audio tower's window"):
        MomentRetrieval(m.audio_encoder, m.text_encoder, m.cascade, embed_dim=32, context=60.0)
    MomentRetrieval(m.audio_encoder, m.text_encoder, m.cascade, embed_dim=32, context=5.0)  # shorter: fine
