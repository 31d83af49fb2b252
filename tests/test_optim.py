"""Optimiser groups: per-tower learning rates, no weight decay on biases / norms / temperatures."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from coattn.coattention import CoAttentionCascade
from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
from coattn.train.module import CoAttnRetrieval
from coattn.train.optim import Optim


def make(**kw) -> CoAttnRetrieval:
    torch.manual_seed(0)
    m = CoAttnRetrieval(audio_encoder=ClapAudioEncoder("HTSAT-mini"),
                        text_encoder=TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                     vocab_size=300),
                        cascade=CoAttentionCascade(kind="iterating", depth=1, width=32, heads=2, ffn_dim=64),
                        embed_dim=16, optim=Optim(lr=1e-3, encoder_lr=1e-4, warmup_steps=2, **kw))
    m._trainer = SimpleNamespace(estimated_stepping_batches=10)  # all configure_optimizers reads of it
    return m


def lr_of(opt: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["initial_lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_audio_encoder_lr_overrides_the_encoder_rate_for_the_audio_tower_only():
    for audio_lr, expected in ((None, 1e-4), (3e-5, 3e-5)):
        m = make(audio_encoder_lr=audio_lr, weight_decay=0.05)
        opt = m.configure_optimizers()["optimizer"]
        lrs = lr_of(opt)
        trainable = [p for p in m.parameters() if p.requires_grad]
        assert len(lrs) == len(trainable)  # every trainable parameter, once
        audio, text = m.model.audio_encoder, m.model.text_encoder
        assert {lrs[id(p)][0] for p in audio.parameters() if p.requires_grad} == {expected}
        assert {lrs[id(p)][0] for p in text.parameters() if p.requires_grad} == {1e-4}
        enc = {id(p) for p in (*audio.parameters(), *text.parameters())}
        assert {lr for pid, (lr, _) in lrs.items() if pid not in enc} == {1e-3}
        assert lrs[id(audio.model.patch_embed.proj.weight)][1] == 0.05
        assert lrs[id(audio.model.patch_embed.proj.bias)][1] == 0.0
