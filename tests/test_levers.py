"""The memory and speed levers of the full size: activation checkpointing of the cascade (same
gradients), bf16 autocast of the towers and the cascade (scores agree with fp32; the loss stays fp32)."""
from __future__ import annotations

import pytest
import torch

from coattn.coattention import CoAttentionCascade
from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
from coattn.loss import RetrievalLoss
from coattn.model import CoAttnModel
from coattn.retrieval import Retriever
from tests.test_coattention import FakeEncoder, feats


def _grads(kind: str, checkpointing: bool, share: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cascade = CoAttentionCascade(kind=kind, depth=3, width=32, heads=4, ffn_dim=64, dropout=0.1,
                                 share_weights=share, positions="relative", checkpointing=checkpointing)
    model = CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).train()
    text, audio = feats(4, 7, 20, [7, 5, 3, 2]), feats(4, 6, 24, [6, 6, 4, 2], seed=2)
    ids = torch.arange(4)
    torch.manual_seed(1)  # the same dropout draws in both runs (checkpointing replays them in the backward)
    loss = RetrievalLoss()(model, audio, text, ids, ids)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,share", [("single", False), ("stacking", False), ("iterating", False),
                                        ("iterating", True)])
def test_checkpointing_gives_the_same_gradients(kind, share):
    loss, ref = _grads(kind, False, share)
    loss_ckpt, got = _grads(kind, True, share)
    assert torch.equal(loss, loss_ckpt)
    assert set(got) == set(ref) and any(n.startswith("cascade.audio_layers") for n in got)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_evaluation():
    cascade = CoAttentionCascade(kind="stacking", depth=2, width=32, heads=4, ffn_dim=64, checkpointing=True)
    model = CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).eval()
    text, audio = feats(2, 5, 20), feats(3, 6, 24)
    s = model.score_grid(model.prepare_text(text), model.prepare_audio(audio))  # grads on, eval: no checkpoint
    assert s.shape == (2, 3) and s.requires_grad


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.flatten().argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_bf16_autocast_scores_agree_with_fp32():
    """HTS-AT (mini) + a RoBERTa + the paper-size iterating cascade, encoded and scored in fp32 and under
    CPU bf16 autocast (what ``trainer.precision: bf16-mixed`` does); every caption x clip score compared."""
    torch.manual_seed(0)
    text_enc = TinyTextEncoder(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256, vocab_size=400)
    captions = [f"a {w} {v} near a {x}" for w, v, x in zip(["dog", "car", "bird", "crowd", "train", "bell"] * 2,
                                                           ["barks", "passes", "sings", "cheers", "stops", "rings"] * 2,
                                                           ["road", "tree", "river", "door"] * 3)]
    text_enc.fit_tokenizer(captions)
    cascade = CoAttentionCascade("iterating", depth=5, width=512, heads=8, ffn_dim=2048, dropout=0.1)
    model = CoAttnModel(ClapAudioEncoder("HTSAT-mini", drop_path_rate=0.0), text_enc, cascade, embed_dim=512).eval()
    wave = 0.1 * torch.randn(6, 480000)
    fp32 = Retriever(precision="fp32")
    with torch.no_grad():
        ref = fp32(model, model.encode_audio(wave), model.encode_text(captions)).scores
        with torch.autocast("cpu", dtype=torch.bfloat16):
            audio, text = model.encode_audio(wave), model.encode_text(captions)
        assert audio.states.dtype == torch.bfloat16  # RoBERTa ends in a LayerNorm, which CPU autocast runs in fp32
        got = Retriever(precision="bf16")(model, audio.to("cpu", torch.float32), text.to("cpu", torch.float32)).scores
    diff, rho = float((got - ref).abs().max()), spearman(got, ref)
    spread = float(ref.std())
    print(f"\nbf16 vs fp32 scores (12 captions x 6 clips): max |diff| {diff:.4f}, score std {spread:.4f}, "
          f"Spearman {rho:.4f}")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert diff < 0.05 and rho > 0.95


def test_bf16_training_step_keeps_the_loss_in_fp32():
    torch.manual_seed(0)
    cascade = CoAttentionCascade(kind="iterating", depth=2, width=32, heads=4, ffn_dim=64, checkpointing=True)
    model = CoAttnModel(FakeEncoder(24), FakeEncoder(20), cascade, embed_dim=16).train()
    text, audio = feats(4, 7, 20), feats(4, 6, 24, seed=2)
    ids = torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = RetrievalLoss()(model, audio, text, ids, ids)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_an_exported_model_does_not_carry_checkpointing():
    """How a run trained is no part of an exported model's architecture (coattn/hub.py, TRAINING_ONLY)."""
    from coattn.hub import component_config
    from coattn.model import build_component

    spec = {"class_path": "coattn.coattention.CoAttentionCascade",
            "init_args": {"kind": "iterating", "depth": 1, "width": 32, "heads": 4, "ffn_dim": 64,
                          "checkpointing": True}}
    cascade = build_component(spec, CoAttentionCascade)
    assert cascade.checkpointing and "checkpointing" not in component_config(cascade, "cascade")["init_args"]
