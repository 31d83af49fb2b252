"""Unit tests of the callbacks' pieces (no training): attention capture, retrieval examples, panels."""
from __future__ import annotations

import torch

from callbacks import AttentionMaps, LogFriendlyProgressBar, RetrievalExamples
from coattn.features import PreparedAudio
from coattn.coattention import CoAttentionCascade, MultiHeadAttention, capture_attention


def cascade_inputs(kind: str, depth: int = 2, share: bool = False):
    torch.manual_seed(0)
    c = CoAttentionCascade(kind, depth=depth, width=16, heads=2, ffn_dim=32, dropout=0.0, share_weights=share).eval()
    text, tmask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    tmask[0, 3:] = False  # caption 0 has 3 real tokens
    audio, amask = torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool)
    return c, text, tmask, audio, amask


def test_capture_attention_records_guided_weights_and_leaves_the_output_unchanged():
    c, text, tmask, audio, amask = cascade_inputs("stacking")
    idx = torch.arange(3)
    with torch.no_grad():
        plain = c(c.prepare_text(text, tmask), idx, PreparedAudio(audio, amask), idx)
        with capture_attention(c) as maps:
            captured = c(c.prepare_text(text, tmask), idx, PreparedAudio(audio, amask), idx)
    assert all(torch.equal(a, b) for a, b in zip(plain, captured))
    assert sorted(maps) == ["audio_layers.0.guided_attn", "audio_layers.1.guided_attn",
                            "text_layers.0.guided_attn", "text_layers.1.guided_attn"]
    t2a = maps["text_layers.0.guided_attn"][0]  # words query frames: (P, heads, L, T)
    a2t = maps["audio_layers.1.guided_attn"][0]  # frames query words: (P, heads, T, L)
    assert t2a.shape == (3, 2, 5, 7) and a2t.shape == (3, 2, 7, 5)
    assert torch.allclose(t2a.sum(-1), torch.ones(3, 2, 5)) and torch.allclose(a2t.sum(-1), torch.ones(3, 2, 7))
    assert torch.all(a2t[0, :, :, 3:] == 0)  # padding tokens get no attention
    # outside the context nothing is recorded
    assert all(m.captured is None for m in c.modules() if isinstance(m, MultiHeadAttention))


def test_iterating_with_shared_weights_records_one_map_per_application():
    c, text, tmask, audio, amask = cascade_inputs("iterating", depth=3, share=True)
    idx = torch.arange(3)
    with torch.no_grad(), capture_attention(c) as maps:
        c(c.prepare_text(text, tmask), idx, PreparedAudio(audio, amask), idx)
    assert list(maps) == ["audio_layers.0.guided_attn"] and len(maps["audio_layers.0.guided_attn"]) == 3
    panels = AttentionMaps.panels(maps, i=0, n_words=3)
    assert [t for t, _ in panels] == [f"layer {n}: audio->text" for n in (1, 2, 3)]
    assert all(m.shape == (3, 7) for _, m in panels)  # words x frames
    with torch.no_grad(), capture_attention(c, "self") as maps:
        c(c.prepare_text(text, tmask), idx, PreparedAudio(audio, amask), idx)
    assert "audio_layers.0.self_attn" in maps and "audio_layers.0.guided_attn" not in maps


def test_retrieval_examples_top_k_hits_and_ranks():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.3], [0.0, 0.8, 0.1], [0.1, 0.1, 0.7]])
    ev = {"scores": scores, "captions": ["a", "b", "c", "d"], "fnames": ["x.wav", "y.wav", "z.wav"],
          "caption_clip": torch.tensor([0, 0, 1, 2])}
    cb = RetrievalExamples(num_queries=3, top_k=2)
    rows = cb.examples(ev)
    assert [r["query"] for r in rows] == ["a", "c", "d"]  # first caption of each clip
    assert [(t["rank"], t["fname"], t["hit"]) for t in rows[0]["top"]] == [(1, "x.wav", True), (2, "z.wav", False)]
    assert [round(t["score"], 4) for t in rows[0]["top"]] == [0.9, 0.5]
    assert rows[1]["true_rank"] == 1 and rows[2]["true_rank"] == 1
    cb = RetrievalExamples(queries=["b", "unknown"], top_k=3)
    (row,) = cb.examples(ev)
    # tie 0.3 / 0.3: the lower index first, as the metrics break ties
    assert [t["fname"] for t in row["top"]] == ["y.wav", "z.wav", "x.wav"] and row["true_rank"] == 3


def test_progress_bar_is_quiet_outside_a_terminal():
    bar = LogFriendlyProgressBar(interactive=False, log_refresh_rate=25)
    assert bar.refresh_rate == 25 and bar.init_validation_tqdm().disable
    assert LogFriendlyProgressBar(interactive=True).refresh_rate == 1
