"""The count head (coattn/counting.py): its score is 0 exactly when each event token's counted onsets equal the
count its caption claims, its targets come from the timings, it trains through the loss, and every scoring path
(grid, pair lists, tiles, exported folders) gives the same score."""
from __future__ import annotations

import pytest
import torch

from coattn.coattention import CoAttentionCascade
from coattn.counting import CountAudio, CountHead, CountText, count_loss, count_targets, occurrences
from coattn.errors import ConfigError
from coattn.loss import RetrievalLoss
from coattn.model import CoAttnModel, build_component
from coattn.retrieval.tiling import score_matrix, score_pair_list
from coattn.time_binding import SceneEvents
from tests.test_coattention import FakeEncoder, feats
from tests.test_time_binding import CAPTIONS, WordEncoder, batch

BIG = 30.0  # a logit that is a certainty


def head_inputs(claims: list[int], onsets: list[int], frame_event: list[int], token_event: list[int], k: int = 4):
    """One caption and one clip by hand: token j claims claims[j] (event tokens only), frames in ``onsets`` start
    an occurrence, frame t shows event frame_event[t], token j names event token_event[j]."""
    lt, t = len(token_event), len(frame_event)
    count = torch.full((1, lt, k), -BIG)
    for j, c in enumerate(claims):
        if c:
            count[0, j, c - 1] = BIG
    event = torch.tensor([[BIG if e >= 0 else -BIG for e in token_event]])
    text = CountText.of(event, count, torch.zeros(1, lt, 8))
    onset = torch.full((1, t), -BIG)
    onset[0, onsets] = BIG
    member = torch.tensor([[[BIG if f == e and f >= 0 else -BIG for e in token_event] for f in frame_event]])
    return text, CountAudio(onset, member)


def test_count_score_is_zero_exactly_when_the_counts_match():
    head = CountHead(width=16, max_count=4)
    frames = [0, 0, 0, 0, -1, 1, 1, -1]  # event 0 twice (onsets at frames 0 and 2), event 1 once (frame 5)
    mask = torch.ones(1, len(frames), dtype=torch.bool)
    rows = torch.tensor([0])
    scores = {}
    for claims in ([0, 2, 0, 1], [0, 3, 0, 1], [0, 1, 0, 1], [0, 2, 0, 3]):
        text, audio = head_inputs(claims, [0, 2, 5], frames, [-1, 0, -1, 1])
        torch.testing.assert_close(occurrences(audio, mask), torch.tensor([[0.0, 2.0, 0.0, 1.0]]))
        scores[tuple(claims)] = float(head.score(text, rows, audio, mask, 1))
    assert scores[(0, 2, 0, 1)] == pytest.approx(0.0, abs=1e-6)
    assert all(s < -0.1 for c, s in scores.items() if c != (0, 2, 0, 1))
    assert scores[(0, 2, 0, 3)] < scores[(0, 3, 0, 1)]  # two counts off costs more than one
    # a padded frame's onset does not count
    text, audio = head_inputs([0, 2, 0, 1], [0, 2, 5, 7], frames[:7] + [1], [-1, 0, -1, 1])
    assert float(head.score(text, rows, audio, torch.tensor([[True] * 7 + [False]]), 1)) == pytest.approx(0.0, abs=1e-6)


def test_count_targets_come_from_the_timings():
    times = torch.tensor([[[0, 0.0, 0.2], [0, 0.25, 0.45], [1, 0.58, 0.9]],
                          [[0, 0.1, 0.3], [-1, -1.0, -1.0], [-1, -1.0, -1.0]]])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    tokens = torch.tensor([[-1, 0, 0, -1, 1], [-1, 0, -1, -1, -1]])
    got = count_targets(times, mask, tokens)
    # the first frame whose centre is inside each occurrence (centres 0.05, 0.15, ...), not the frame holding the
    # onset (0.58 lies in frame 5, whose centre 0.55 is before it): the onset frame is one of the event's frames
    assert got.onsets[0].nonzero().flatten().tolist() == [0, 2, 6]
    assert got.onsets[1].nonzero().flatten().tolist() == [1]
    assert bool((got.frame_event[got.onsets.bool()] >= 0).all())
    assert got.token_count.tolist() == [[0, 2, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert got.frame_event[0].tolist() == [0, 0, 0, 0, 0, -1, 1, 1, 1, -1]
    # the supervised terms are lowest for a head that already matches the timings
    text, audio = head_inputs([0, 2, 2, 0, 1], [0, 2, 6], got.frame_event[0].tolist(), tokens[0].tolist())
    right = count_loss(text, audio, mask[:1], torch.ones(1, 5, dtype=torch.bool),
                       count_targets(times[:1], mask[:1], tokens[:1]))
    assert all(float(v) < 1e-6 for v in right.values())
    text, audio = head_inputs([0, 3, 3, 0, 1], [0, 6], got.frame_event[0].tolist(), tokens[0].tolist())
    wrong = count_loss(text, audio, mask[:1], torch.ones(1, 5, dtype=torch.bool),
                       count_targets(times[:1], mask[:1], tokens[:1]))
    assert float(wrong["claim"]) > 1.0 and float(wrong["onset"]) > 1.0
    # the found-count term: event 0 counted once where it happens twice, on its two tokens (Huber 0.375 each)
    assert float(wrong["found"]) == pytest.approx(2 * 0.375 / 3, abs=1e-5)
    # an onset doubled on the next frame: one occurrence too many for event 0
    text, audio = head_inputs([0, 2, 2, 0, 1], [0, 1, 2, 6], got.frame_event[0].tolist(), tokens[0].tolist())
    doubled = count_loss(text, audio, mask[:1], torch.ones(1, 5, dtype=torch.bool),
                         count_targets(times[:1], mask[:1], tokens[:1]))
    assert float(doubled["found"]) == pytest.approx(2 * 0.375 / 3, abs=1e-5)


def count_model(seed: int = 0, reads: str = "pair", dropout: float = 0.0) -> CoAttnModel:
    torch.manual_seed(seed)
    cascade = CoAttentionCascade(kind="iterating", depth=2, width=32, heads=4, ffn_dim=64, dropout=dropout,
                                 positions="relative")
    return CoAttnModel(FakeEncoder(24), WordEncoder(20), cascade, embed_dim=16, count_head=4,
                       count_audio=reads).train()


def test_count_term_trains_the_head_through_the_loss():
    text, audio, clips = batch()
    m = count_model()
    times = torch.tensor([[0, 0.0, 0.2], [0, 0.25, 0.45], [1, 0.55, 1.0]]).expand(4, 3, 3).clone()
    events = SceneEvents(times, [[(0, 2, 6), (1, 14, 18)]] * 4)  # the two nouns of each caption
    out = RetrievalLoss(count_weight=0.5)(m, audio, text, clips, clips, CAPTIONS, events)
    parts = sum(out[f"count_{k}"] for k in ("onset", "member", "claim", "event"))
    torch.testing.assert_close(out["count_loss"].detach(), parts)
    torch.testing.assert_close(out["loss"], out["pair_loss"] + 0.5 * out["dual_loss"] + 0.5 * out["count_loss"])
    m.zero_grad()
    out["loss"].backward()
    for name in ("count_head.onset.0.weight", "count_head.count.weight", "count_head.log_beta",
                 "cascade.audio_layers.1.guided_attn.q.weight"):
        assert float(dict(m.named_parameters())[name].grad.abs().sum()) > 0, name
    assert "count_loss" not in RetrievalLoss()(m, audio, text, clips, clips, CAPTIONS, events)  # off by default
    # count_found_weight weights the found-count term inside the count term (0 by default: logged, not trained)
    assert float(out["count_found"]) > 0
    found = RetrievalLoss(count_weight=0.5, count_found_weight=2.0)(m, audio, text, clips, clips, CAPTIONS, events)
    torch.testing.assert_close(found["count_loss"].detach(), parts + 2.0 * found["count_found"])
    with pytest.raises(ConfigError, match="count_found_weight weights a part of the count term"):
        RetrievalLoss(count_found_weight=1.0)
    plain = CoAttnModel(FakeEncoder(24), WordEncoder(20), m.cascade, embed_dim=16)
    with pytest.raises(ConfigError, match="model.count_head"):
        RetrievalLoss(count_weight=0.5)(plain, audio, text, clips, clips, CAPTIONS, events)
    with pytest.raises(ConfigError, match="count_weight"):
        RetrievalLoss(count_weight=-1.0)
    with pytest.raises(ValueError, match="count_beta must be > 0"):
        CoAttnModel(FakeEncoder(24), WordEncoder(20), m.cascade, count_head=4, count_beta=0.0)
    with pytest.raises(ValueError, match="iterating"):
        CoAttnModel(FakeEncoder(24), WordEncoder(20), CoAttentionCascade(kind="stacking", width=32, heads=4),
                    count_head=4)


@pytest.mark.parametrize("reads", ["pair", "clip"])
def test_count_head_changes_the_pair_score_and_every_path_agrees(reads):
    m = count_model(reads=reads).eval()
    text, audio = feats(5, 5, 20, [5, 4, 3, 2, 5]), feats(4, 6, 24, [6, 3, 5, 6], seed=4)
    with torch.no_grad():
        m.count_head.log_beta.fill_(0.0)
        pt, pa = m.prepare_text(text), m.prepare_audio(audio)
        full = m.score_grid(pt, pa)
        torch.testing.assert_close(score_matrix(m, pt, pa, tile_pairs=3), full, atol=1e-5, rtol=1e-5)
        ti, aj = torch.tensor([4, 0, 0, 2]), torch.tensor([1, 3, 0, 0])
        torch.testing.assert_close(score_pair_list(m, pt, pa, ti, aj, tile_pairs=2), full[ti, aj],
                                   atol=1e-5, rtol=1e-5)
        m.count_head.log_beta.fill_(-80.0)  # beta ~ 0: the cosine alone
        assert not torch.allclose(m.score_grid(pt, pa), full, atol=1e-3)


@pytest.mark.parametrize("reads", ["pair", "clip"])
def test_count_head_survives_export(tmp_path, reads):
    def part(cls: str, **args) -> torch.nn.Module:
        return build_component({"class_path": cls, "init_args": args}, torch.nn.Module)

    torch.manual_seed(0)
    model = CoAttnModel(part("coattn.encoders.ClapAudioEncoder", config="HTSAT-mini"),
                        part("coattn.encoders.TinyTextEncoder", hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, vocab_size=300, max_length=12),
                        part("coattn.coattention.CoAttentionCascade", kind="iterating", depth=1, width=32, heads=2,
                             ffn_dim=64),
                        embed_dim=16, count_head=3, count_audio=reads).eval()
    model.text_encoder.fit_tokenizer(CAPTIONS)
    model.save_pretrained(tmp_path / "out")
    got = CoAttnModel.from_pretrained(tmp_path / "out")
    assert got.count_head is not None and got.count_head.max_count == 3 and got.count_head.reads == reads
    wave = 0.1 * torch.randn(2, 480000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = (m.score_grid(m.prepare_text(m.encode_text(CAPTIONS[:3])), m.prepare_audio(m.encode_audio(wave)))
                         for m in (model, got))
    assert torch.equal(before, after)


@pytest.mark.parametrize("detach", [True, False])
def test_detached_count_check_leaves_the_head_to_its_supervised_term(detach):
    """count_detach (default): the contrastive loss trains beta alone; trained through the score, the head too."""
    text, audio, clips = batch()
    torch.manual_seed(0)
    cascade = CoAttentionCascade(kind="iterating", depth=2, width=32, heads=4, ffn_dim=64, dropout=0.0,
                                 positions="relative")
    m = CoAttnModel(FakeEncoder(24), WordEncoder(20), cascade, embed_dim=16, count_head=4, count_detach=detach).train()
    out = RetrievalLoss()(m, audio, text, clips, clips, CAPTIONS)  # no count term: the contrastive loss alone
    out["pair_loss"].backward()
    grads = {n: p.grad for n, p in m.count_head.named_parameters()}
    assert float(grads["log_beta"].abs()) > 0
    moved = [n for n, g in grads.items() if n != "log_beta" and g is not None and float(g.abs().sum()) > 0]
    assert bool(moved) != detach, moved


def test_clip_count_audio_reads_no_caption():
    """count_audio: clip: the onsets a clip shows are the same whatever caption asks (from the pair stream they
    follow the caption), and training (per-pair layer 1, dropout) and evaluation (hoisted) read the same frames."""
    from coattn.counting import pair_counts

    text, audio = feats(3, 5, 20, [5, 4, 3], seed=2), feats(1, 6, 24, [6], seed=3)
    clip0, rows = torch.zeros(3, dtype=torch.long), torch.arange(3)
    onsets = {}
    for reads in ("pair", "clip"):
        m = count_model(reads=reads, dropout=0.1)
        for mode in ("train", "eval"):
            getattr(m, mode)()
            with torch.no_grad():
                found, _ = pair_counts(m, m.prepare_text(text), rows, m.prepare_audio(audio), clip0)
            onsets[reads, mode] = found.onset_logits
    assert not torch.allclose(onsets["pair", "eval"][0], onsets["pair", "eval"][1], atol=1e-4)
    for mode in ("train", "eval"):
        torch.testing.assert_close(onsets["clip", mode], onsets["clip", mode][:1].expand(3, -1))
    torch.testing.assert_close(onsets["clip", "train"], onsets["clip", "eval"])
    with pytest.raises(ValueError, match="count_audio must be 'pair' or 'clip'"):
        count_model(reads="frames")


# ---- count rewrites: the found count taught the true occurrences under a caption that claims another count -----
REWRITE_CAPTIONS = ["a bell rings twice then a drum", "a drum then a bell", "two dogs bark then a hum",
                    "a hiss then a beep"]


def rewrite_events() -> SceneEvents:
    """Per caption, its events' occurrences (event 0 first) and the char spans of the words naming them."""
    occ = [[(0, 0.0, 0.1), (0, 0.2, 0.3), (1, 0.6, 0.9)], [(0, 0.0, 0.3), (1, 0.5, 0.7)],
           [(0, 0.0, 0.1), (0, 0.15, 0.3), (1, 0.6, 0.9)], [(0, 0.0, 0.3), (1, 0.5, 0.8)]]
    words = [{"bell": 0, "rings": 0, "drum": 1}, {"drum": 0, "bell": 1}, {"dogs": 0, "bark": 0, "hum": 1},
             {"hiss": 0, "beep": 1}]
    import re
    phrases = [[(w[m.group(0)], *m.span()) for m in re.finditer(r"\w+", c) if m.group(0) in w]
               for c, w in zip(REWRITE_CAPTIONS, words)]
    return SceneEvents.build(occ, phrases)


def test_carry_phrases_keeps_every_span_on_its_word():
    from coattn.captions import add_count, carry_phrases, change_count

    events = rewrite_events()
    for i, c in enumerate(REWRITE_CAPTIONS):
        spans = events.phrases[i]
        ev = [int(e) for e in events.times[i, :, 0].tolist() if e >= 0]
        for new in (change_count(c), add_count(c, spans, {e: ev.count(e) for e in set(ev)})):
            if new is None:
                continue
            carried = carry_phrases(c, new, spans)
            assert [(e, new[a:z]) for e, a, z in carried] == [(e, c[a:z]) for e, a, z in spans], (c, new)
    # a span the edit touches is dropped; the others stay on their words
    assert carry_phrases("two dogs bark", "three dogs bark", [(0, 0, 3), (0, 4, 8)]) == [(0, 6, 10)]


def test_count_rewrites_are_the_count_negatives_and_their_tokens_count_the_clip():
    from coattn.negatives import caption_variants, count_rewrites
    from coattn.time_binding import token_events

    events = rewrite_events()
    for seed in range(6):
        texts, owners, phrases = count_rewrites(REWRITE_CAPTIONS, events, seed)
        variants, var_owners = caption_variants(REWRITE_CAPTIONS, seed, events)
        assert set(zip(texts, owners)) <= set(zip(variants, var_owners))  # the same draw as the negatives
        assert len(texts) == len(REWRITE_CAPTIONS)  # each caption here has a count to change or an event heard once
        tokens = token_events(WordEncoder(20).token_offsets(texts), phrases, 12)
        mask = torch.ones(len(texts), 10, dtype=torch.bool)
        got = count_targets(events.times[torch.tensor(owners)], mask, tokens)
        for j, (text, i) in enumerate(zip(texts, owners)):
            assert text != REWRITE_CAPTIONS[i]
            # the rewrite claims another count; its event words still count what the clip holds
            want = {0: 2, 1: 1} if i in (0, 2) else {0: 1, 1: 1}
            named = tokens[j] >= 0
            assert bool(named.any())
            assert got.token_count[j][named].tolist() == [want[int(e)] for e in tokens[j][named]]


def test_count_rewrite_term_enters_the_count_term_with_its_weight():
    audio, clips = feats(4, 8, 24, seed=3), torch.arange(4)
    text = WordEncoder(20)(REWRITE_CAPTIONS)
    events = rewrite_events()
    m = count_model()
    base = RetrievalLoss(count_weight=0.5, seed=1)(m, audio, text, clips, clips, REWRITE_CAPTIONS, events)
    assert "count_rewrite" not in base  # off by default
    out = RetrievalLoss(count_weight=0.5, count_rewrite_weight=2.0, seed=1)(m, audio, text, clips, clips,
                                                                          REWRITE_CAPTIONS, events)
    parts = sum(out[f"count_{k}"] for k in ("onset", "member", "claim", "event"))
    assert float(out["count_rewrite"]) > 0
    torch.testing.assert_close(out["count_loss"].detach(), parts + 2.0 * out["count_rewrite"])
    m.zero_grad()
    (out["count_loss"] - base["count_loss"]).backward()  # the rewrite term alone: it reaches the head's audio side
    grads = dict(m.named_parameters())
    for name in ("count_head.queries.weight", "count_head.onset.0.weight",
                 "cascade.audio_layers.1.guided_attn.q.weight"):
        assert float(grads[name].grad.abs().sum()) > 0, name
    assert float(grads["count_head.count.weight"].grad.abs().sum()) == 0  # no claimed-count term on a rewrite
    with pytest.raises(ConfigError, match="count_rewrite_weight weights a part of the count term"):
        RetrievalLoss(count_rewrite_weight=1.0)
