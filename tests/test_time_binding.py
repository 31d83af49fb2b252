"""Time binding (docs/time.md): residual scoring, order twins in a batch, event-swapped clips, and
attention grounding from event timings."""
from __future__ import annotations

import re
import zlib

import pytest
import torch

from coattn.coattention import CoAttentionCascade
from coattn.errors import ConfigError
from coattn.features import SequenceFeatures
from coattn.loss import RetrievalLoss, nt_xent, pair_logits
from coattn.model import CoAttnModel
from coattn.scenes import clip_scene, phrase_spans, split_twins, window_fractions
from coattn.time_binding import (SceneEvents, event_cuts, frame_events, grounding_loss, pair_heads_from_dual,
                                 swap_segments, token_events)
from data_modules.datasets import TwinEpochSampler
from tests.test_coattention import FakeEncoder, feats

CAPTIONS = ["a bell then a beep", "a drum then a hum", "a hiss then a bell", "a beep then a drum"]


class WordEncoder(FakeEncoder):
    """Text stand-in: one token per word, features seeded by the word (so a caption's rewrite has features)."""

    def forward(self, captions):
        words = [re.findall(r"\S+", c) for c in captions]
        n = max(len(w) for w in words)
        states, mask = torch.zeros(len(captions), n, self.out_dim), torch.zeros(len(captions), n, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                states[i, j] = torch.randn(self.out_dim, generator=g)
                mask[i, j] = True
        return SequenceFeatures(states, mask, states.sum(1) / mask.sum(1, keepdim=True))

    def token_offsets(self, captions):
        return [[m.span() for m in re.finditer(r"\S+", c)] for c in captions]


def model(kind="iterating", seed=0, width=32, feature_norm=False) -> CoAttnModel:
    torch.manual_seed(seed)
    cascade = CoAttentionCascade(kind=kind, depth=2, width=width, heads=4, ffn_dim=64, dropout=0.0,
                                 positions="relative")
    return CoAttnModel(FakeEncoder(24), WordEncoder(20), cascade, embed_dim=16, feature_norm=feature_norm).train()


def batch(b=4):
    m_text = WordEncoder(20)(CAPTIONS[:b])
    return m_text, feats(b, 8, 24, seed=3), torch.arange(b)


# ---- 1. residual scoring -----------------------------------------------------------------------------------
def test_residual_with_a_silent_cascade_is_the_dual_loss(monkeypatch):
    text, audio, clips = batch()
    m = model()
    m.pair_temperature.log_scale.data.copy_(m.dual_temperature.log_scale.data + 0.3)  # any tau: set both equal
    m.dual_temperature.log_scale.data.copy_(m.pair_temperature.log_scale.data)
    monkeypatch.setattr(m, "score_grid", lambda t, a: torch.zeros(len(t), len(a)))
    out = RetrievalLoss(residual_lambda=1.0)(m, audio, text, clips, clips)
    torch.testing.assert_close(out["pair_loss"], out["dual_loss"])
    # lambda_r scales the dual logits: with lambda_r = 2, the loss of the dual at half the temperature
    half = RetrievalLoss(residual_lambda=2.0)(m, audio, text, clips, clips)["pair_loss"]
    dual = nt_xent(m.dual_embed_text(text) @ m.dual_embed_audio(audio).t() * 2 * m.dual_temperature.scale, clips,
                   clips)
    torch.testing.assert_close(half, dual)
    plain = RetrievalLoss()(m, audio, text, clips, clips)["pair_loss"]
    # off by default: the pair score alone
    assert float(plain.detach()) != pytest.approx(float(out["pair_loss"].detach()))


def test_residual_caption_negatives_carry_their_own_dual_score(monkeypatch):
    text, audio, clips = batch()
    m = model()
    monkeypatch.setattr(m, "score_grid", lambda t, a: torch.zeros(len(t), len(a)))
    monkeypatch.setattr(m, "score_pairs", lambda t, ti, a, aj: torch.zeros(len(ti)))
    cfg = RetrievalLoss(residual_lambda=1.0, caption_negatives=True)
    dual_t, dual_a = m.dual_embed_text(text), m.dual_embed_audio(audio)
    t2a, a2t = pair_logits(cfg, m, m.prepare_text(text), m.prepare_audio(audio), audio, dual_t, dual_a, clips, clips,
                           clips, None, CAPTIONS)
    scale = m.pair_temperature.scale
    torch.testing.assert_close(t2a[:, 0], (dual_t * dual_a).sum(-1) * scale)  # the positive: lambda s_dual / tau
    reversed_ = ["a beep then a bell", "a hum then a drum", "a bell then a hiss", "a drum then a beep"]
    want = (m.dual_embed_text(m.encode_text(reversed_)) * dual_a).sum(-1) * scale
    torch.testing.assert_close(a2t[:, len(CAPTIONS) + 1], want)  # the first rewrite of each clip's caption


def test_residual_with_every_mined_negative_equals_the_bxb_grid():
    """hard with K = B - 1 hardest and R = 0 random negatives scores exactly the B x B pairs: the same loss as
    local, residual term included (each mined pair carries its own s_dual, on both sides)."""
    text, audio, clips = batch()
    m = model()
    local = RetrievalLoss(residual_lambda=1.0)(m, audio, text, clips, clips)["pair_loss"]
    hard = RetrievalLoss(residual_lambda=1.0, pair_negatives="hard", pair_k=len(clips) - 1,
                         pair_random=0)(m, audio, text, clips, clips)["pair_loss"]
    torch.testing.assert_close(hard, local)
    plain = RetrievalLoss(pair_negatives="hard", pair_k=len(clips) - 1, pair_random=0)(m, audio, text, clips,
                                                                                        clips)["pair_loss"]
    assert float(plain.detach()) != pytest.approx(float(hard.detach()))


def test_residual_rejects_global_negatives_and_sets_the_fusion_lambda():
    with pytest.raises(ConfigError, match="not supported with residual"):
        RetrievalLoss(residual_lambda=1.0, pair_negatives="global")
    from coattn.train.module import CoAttnRetrieval

    cascade = CoAttentionCascade(kind="iterating", depth=1, width=32, heads=4, ffn_dim=64)
    module = CoAttnRetrieval(loss=RetrievalLoss(residual_lambda=0.5), audio_encoder=FakeEncoder(24),
                             text_encoder=WordEncoder(20), cascade=cascade, embed_dim=16)
    assert float(module.model.fusion_lambda) == 0.5  # evaluation (fusion null) ranks by s_pair + 0.5 s_dual


def test_pair_heads_start_as_the_dual_heads():
    m = model(width=24, feature_norm=True)  # audio width 24 = cascade width; text 20 does not fit
    m.dual_audio.norm.running_mean.normal_()
    m.dual_audio.norm.running_var.uniform_(0.5, 2.0)
    assert pair_heads_from_dual(m) == ["audio"]
    m.eval()
    x = torch.randn(5, 24)
    torch.testing.assert_close(m.pair_audio(x), m.dual_audio(x))  # BatchNorm folded into the linear map


# ---- 2. order twins: in one batch, and built by swapping event segments -------------------------------------
@pytest.mark.parametrize("singles", [0, 5])
def test_twins_land_in_the_same_batch(singles):
    n_pairs, B = 12, 8
    twins = [i + 1 if i % 2 == 0 else i - 1 for i in range(2 * n_pairs)] + [None] * singles
    groups = [list(range(5 * c, 5 * c + 5)) for c in range(len(twins))]  # 5 captions per clip
    order = TwinEpochSampler(groups, B, twins, seed=3).order(0)
    assert sorted(order) == list(range(5 * len(twins)))  # every item once
    clip = [i // 5 for i in order]
    batches = [set(clip[k:k + B]) for k in range(0, len(clip), B)]
    apart = sum(1 for bt in batches for c in bt if twins[c] is not None and twins[c] not in bt)
    assert apart == 0 if singles == 0 else apart <= 2  # at most one pair split per epoch (no single left)


def test_split_twins_reads_mutual_pairs():
    meta = {"d/a.wav": {"twin": "d/b.wav"}, "d/b.wav": {"twin": "d/a.wav"}, "d/c.wav": {"twin": "d/a.wav"},
            "d/e.wav": {"twin": None}}
    assert split_twins(meta, "d", ["c.wav", "b.wav", "a.wav", "e.wav"]) == [None, 2, 1, None]


def test_swapped_clips_are_segment_permutations_and_swap_back():
    audio = feats(3, 10, 4, lengths=[10, 8, 10], seed=5)
    # clip 0: events at [0.05, 0.3] and [0.5, 0.9]; clip 1 (8 real frames): three events; clip 2: one event
    times = torch.full((3, 3, 3), -1.0)
    times[0, :2] = torch.tensor([[0, 0.05, 0.3], [1, 0.5, 0.9]])
    times[1] = torch.tensor([[0, 0.0, 0.15], [1, 0.25, 0.4], [2, 0.6, 0.7]])
    times[2, 0] = torch.tensor([0, 0.1, 0.5])
    cuts = event_cuts(times, audio.mask.sum(1), 10)
    assert cuts == [[4], [2, 5], []]
    swapped, back_cuts = swap_segments(audio, cuts)
    s, x = swapped.states, audio.states
    torch.testing.assert_close(s[0], torch.cat([x[0, 4:], x[0, :4]]))  # the two segments swapped
    torch.testing.assert_close(s[1, :8], torch.cat([x[1, 5:8], x[1, 2:5], x[1, :2]]))  # three reversed
    torch.testing.assert_close(s[1, 8:], x[1, 8:])  # padding stays
    torch.testing.assert_close(s[2], x[2])  # one event: nothing to swap
    again, _ = swap_segments(swapped, back_cuts)
    torch.testing.assert_close(again.states, audio.states)  # reversing twice gives the original


def test_swap_negatives_add_one_column_for_order_captions():
    text, audio, clips = batch()
    m = model()
    times = torch.full((4, 2, 3), -1.0)
    times[:3] = torch.tensor([[0, 0.0, 0.4], [1, 0.6, 1.0]])  # clip 3 has no timings
    events = SceneEvents(times, [[]] * 4)
    cfg = RetrievalLoss(swap_negatives=True)
    dual_t, dual_a = m.dual_embed_text(text), m.dual_embed_audio(audio)
    t2a, _ = pair_logits(cfg, m, m.prepare_text(text), m.prepare_audio(audio), audio, dual_t, dual_a, clips, clips,
                         clips, None, CAPTIONS, events)
    assert t2a.shape == (4, 6)  # positive, 4 columns (own slot -inf), the swapped clip
    assert torch.isfinite(t2a[:3, -1]).all() and t2a[3, -1] == float("-inf")
    swapped, _ = swap_segments(audio, event_cuts(times, audio.mask.sum(1), 8))
    want = m.score_pairs(m.prepare_text(text), torch.arange(4), m.prepare_audio(swapped), torch.arange(4))
    torch.testing.assert_close(t2a[:3, -1], want[:3] * m.pair_temperature.scale)
    out = cfg(m, audio, text, clips, clips, CAPTIONS, events)
    assert out["pair_loss"] > RetrievalLoss()(m, audio, text, clips, clips, CAPTIONS)["pair_loss"]


# ---- 3. grounding --------------------------------------------------------------------------------------------
def test_scene_phrases_and_frames():
    entry = {"events": [{"type": "bell", "count": 2, "occurrences": [[0.5, 1.5], [2.0, 3.0]], "nouns": ["chime"]},
                        {"type": "beep", "count": 1, "occurrences": [[6.0, 7.0]]}]}
    scene = clip_scene(entry)
    caption = "Two chimes, then a short beep."
    assert [(e, caption[a:z]) for e, a, z in phrase_spans(caption, scene)] == [(0, "chimes"), (1, "beep")]
    fr = window_fractions(scene, 10.0)
    assert fr == [(0, 0.05, 0.15), (0, 0.2, 0.3), (1, 0.6, 0.7)]
    labels = frame_events(SceneEvents.build([fr], [[]]).times, torch.ones(1, 10, dtype=torch.bool))
    assert labels.tolist() == [[0, 0, 0, -1, -1, -1, 1, -1, -1, -1]]  # frame centres 0.05, 0.15, 0.25, 0.65
    offsets = [[(0, 0), (0, 3), (4, 10), (10, 11), (12, 16), (17, 18), (19, 24), (25, 29), (29, 30), (0, 0)]]
    assert token_events(offsets, [phrase_spans(caption, scene)], 10).tolist() == [[-1, -1, 0, -1, -1, -1, -1, 1,
                                                                                   -1, -1]]
    assert clip_scene({"events": [{"type": "bell", "count": 1}]}) is None  # no timings: no scene


def test_grounding_loss_is_zero_when_attention_matches_the_timings():
    frames = torch.tensor([[0, 0, -1, 1, 1]])  # event 0 on frames 0-1, event 1 on frames 3-4
    tokens = torch.tensor([[-1, 0, -1, 1]])  # token 1 names event 0, token 3 event 1
    matched = torch.zeros(1, 5, 4)
    matched[0, :2] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # event-0 frames: the template and their word
    matched[0, 2] = 0.25
    matched[0, 3:] = torch.tensor([0.0, 0.0, 0.3, 0.7])
    assert float(grounding_loss(matched, frames, tokens)) == 0.0
    uniform = torch.full((1, 5, 4), 0.25)
    assert float(grounding_loss(uniform, frames, tokens)) == pytest.approx(-torch.log(torch.tensor(0.5)).item())
    crossed = matched.clone()
    crossed[0, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # frame 0 attends to the other event's word
    assert float(grounding_loss(crossed, frames, tokens)) > 1.0


@pytest.mark.parametrize("kind", ["iterating", "stacking"])
def test_grounding_term_trains_the_cascade_attention(kind):
    text, audio, clips = batch()
    m = model(kind)
    times = torch.tensor([[0, 0.0, 0.45], [1, 0.55, 1.0]]).expand(4, 2, 3).clone()
    phrases = [[(e, a, z) for e, (a, z) in enumerate([(2, 6), (14, 18)])]] * 4  # the two nouns of each caption
    events = SceneEvents(times, phrases)
    out = RetrievalLoss(grounding_weight=1.0)(m, audio, text, clips, clips, CAPTIONS, events)
    assert float(out["grounding_loss"].detach()) > 0
    torch.testing.assert_close(out["loss"], out["pair_loss"] + 0.5 * out["dual_loss"] + out["grounding_loss"])
    m.zero_grad()
    out["grounding_loss"].backward()
    grads = [p.grad for n, p in m.named_parameters() if ".guided_attn." in n and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert "grounding_loss" not in RetrievalLoss()(m, audio, text, clips, clips, CAPTIONS, events)  # off: 0.0


def test_data_module_carries_timings_and_batches_twins(tiny_clotho, tmp_path):
    import json
    import shutil

    from data_modules import ClothoDataModule

    dm = ClothoDataModule(root=str(tiny_clotho), batch_size=4, num_workers=0, pad="zeros", clip_seconds=10.0)
    assert next(iter(dm.train_dataloader())).events is None  # off unless the loss asks
    assert dm.set_scene_events(True)
    b = next(iter(dm.train_dataloader()))
    t = b.events.times
    assert t.shape[0] == 4 and ((t[..., 0] >= 0).sum(1) >= 2).all()  # every synthetic clip: >= 2 occurrences
    real = t[..., 0] >= 0
    assert (t[..., 1][real] >= 0).all() and (t[..., 2][real] <= 0.2 + 1e-6).all()  # 2 s clips in a 10 s window
    assert sum(len({e for e, _, _ in p}) >= 2 for p in b.events.phrases) >= 2  # most captions name both events
    assert len(b.valid_items().events) == 4
    # twins: a copy of the root whose metadata pairs clips 0-1, 2-3, ...
    root = tmp_path / "root"
    shutil.copytree(tiny_clotho, root)
    meta = json.loads((root / "synth_metadata.json").read_text())
    names = sorted(k for k in meta if k.startswith("development/"))
    for a, z in zip(names[::2], names[1::2]):
        meta[a]["twin"], meta[z]["twin"] = z, a
    (root / "synth_metadata.json").write_text(json.dumps(meta))
    dm = ClothoDataModule(root=str(root), batch_size=4, num_workers=0, twin_batches=True)
    assert isinstance(dm.train_dataloader().sampler, TwinEpochSampler)
    for batch in dm.train_dataloader():
        fnames = set(batch.fnames)
        assert all(f"development_{int(f[12:17]) ^ 1:05d}.wav" in fnames for f in fnames)  # 0-1, 2-3...: together


def test_freeze_dual_keeps_the_dual_branch_exactly_as_stage_one_left_it():
    """freeze_dual: the dual heads get no gradient and their feature_norm BatchNorm stays in eval mode (no
    running-statistics update), so the converged stage-1 dual is the fixed reference of the residual term."""
    from coattn.train.module import CoAttnRetrieval

    torch.manual_seed(0)
    cascade = CoAttentionCascade(kind="iterating", depth=1, width=32, heads=4, ffn_dim=64, positions="relative")
    module = CoAttnRetrieval(loss=RetrievalLoss(residual_lambda=1.0), audio_encoder=FakeEncoder(24),
                             text_encoder=WordEncoder(20), cascade=cascade, embed_dim=16, feature_norm=True,
                             freeze_dual=True)
    # eval from construction on, before any .train() call: Lightning captures the modes when a fit starts and
    # restores them after each validation (a fit once updated the frozen dual's BatchNorm statistics this way)
    assert not module.model.dual_audio.norm.training and not module.model.dual_text.norm.training
    module.train()
    m = module.model
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("dual_", "pair_"))}
    assert not m.dual_audio.training and not m.dual_text.training and m.cascade.training
    text, audio, clips = batch()
    out = module.loss(m, audio, text, clips, clips)
    out["loss"].backward()
    assert all(p.grad is None for part in module._dual_parts() for p in part.parameters())
    assert any(p.grad is not None for p in m.pair_audio.parameters())
    after = m.state_dict()
    for k, v in before.items():
        if k.startswith("dual_"):
            torch.testing.assert_close(after[k], v)  # BatchNorm running stats and weights unchanged
    # without it, the same step moves the dual BatchNorm's statistics
    free = CoAttnRetrieval(loss=RetrievalLoss(residual_lambda=1.0), audio_encoder=FakeEncoder(24),
                           text_encoder=WordEncoder(20), cascade=cascade, embed_dim=16, feature_norm=True).train()
    stats = free.model.dual_audio.norm.running_mean.clone()
    free.loss(free.model, audio, text, clips, clips)
    assert not torch.equal(free.model.dual_audio.norm.running_mean, stats)


# ---- 4. count negatives from the timings ---------------------------------------------------------------------
def test_add_count_gives_an_event_heard_once_a_count():
    import random

    from coattn.captions import add_count

    caption = "A dog barks twice, then a cuckoo."
    phrases = [(0, 2, 5), (1, 24, 32)]  # "dog", "a cuckoo"
    assert caption[24:32] == "a cuckoo"
    assert add_count(caption, phrases, {0: 2, 1: 1}) == "A dog barks twice, then a cuckoo twice."
    assert add_count(caption, phrases, {0: 2, 1: 2}) is None  # no event heard once
    assert add_count("A dog once, then a cow.", [(0, 2, 5)], {0: 1}) is None  # already counted
    # random choice among the events heard once; never past the caption's end
    two = "A bell, then a drum."
    outs = {add_count(two, [(0, 0, 6), (1, 13, 19)], {0: 1, 1: 1}, random.Random(s)) for s in range(20)}
    assert outs == {"A bell twice, then a drum.", "A bell, then a drum twice."}
    assert add_count(two, [(0, 0, 99)], {0: 1}) is None
    # the words of one name are one run: the count goes after the whole name
    vac = "A vacuum cleaner, then a dog."
    assert add_count(vac, [(0, 2, 8), (0, 9, 16), (1, 25, 28)], {0: 1, 1: 2}) == "A vacuum cleaner twice, then a dog."


def test_count_negatives_use_the_timings_only_when_asked():
    from coattn.negatives import caption_variants

    captions = ["a beep then a bell", "a hum twice then a drum"]
    times = torch.tensor([[[0, 0.0, 0.2], [1, 0.5, 0.7], [-1, -1, -1]],
                          [[0, 0.0, 0.2], [0, 0.3, 0.4], [1, 0.6, 0.8]]])
    events = SceneEvents(times, [[(0, 0, 6), (1, 12, 18)], [(0, 0, 5), (1, 17, 23)]])
    plain, owners = caption_variants(captions, seed=0)
    assert not any("twice" in t for t, o in zip(plain, owners) if o == 0)  # a rewrite cannot count a bare event
    seen = set()
    for seed in range(10):
        texts, owners = caption_variants(captions, seed=seed, events=events)
        seen |= {t for t, o in zip(texts, owners) if o == 0}
        # caption 1: "hum" is heard twice (no count added to it); "a drum" once may get one
        assert all(t in ("a drum then a hum twice", "a hum once then a drum", "a hum three times then a drum",
                         "a hum twice then a drum twice") for t, o in zip(texts, owners) if o == 1)
    assert {"a beep twice then a bell", "a beep then a bell twice"} <= seen


def test_count_negatives_reach_the_loss(monkeypatch):
    import coattn.loss as loss

    calls = []
    real = loss.caption_variants
    monkeypatch.setattr(loss, "caption_variants", lambda c, s, e=None: calls.append(e) or real(c, s, e))
    text, audio, clips = batch()
    m = model()
    events = SceneEvents(torch.tensor([[[0, 0.0, 0.4], [1, 0.6, 1.0]]] * 4), [[(0, 0, 6)]] * 4)
    dual_t, dual_a = m.dual_embed_text(text), m.dual_embed_audio(audio)
    for flag in (False, True):
        pair_logits(RetrievalLoss(caption_negatives=True, count_negatives=flag), m, m.prepare_text(text),
                    m.prepare_audio(audio), audio, dual_t, dual_a, clips, clips, clips, None, CAPTIONS, events)
    assert calls[0] is None and calls[1] is events
