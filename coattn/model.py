"""The retrieval model as a plain ``nn.Module``: encoders, co-attention cascade, joint-space heads.

Two scoring branches share the encoders:

    dual   s_dual(i, j) = < norm(P_t(pool(T_i))), norm(P_a(pool(A_j))) >      one matmul for all pairs
    pair   s_pair(i, j) = < norm(W_t x_ij), norm(W_a y_ij) >,  (x_ij, y_ij) = Cascade(T_i W_in_t, A_j W_in_a)

``pair`` is the co-attention score of the paper; it must run the cascade on every (caption,
clip) pair. ``dual`` is the dual-encoder baseline (cascade ``none`` uses it alone), trains with an
auxiliary loss and gives the shortlist of two-stage retrieval. With ``dual_pooling: encoder``,
``dual_projection: clap`` and a LAION-CLAP checkpoint for both towers and the projections, the
dual branch *is* CLAP's zero-shot retrieval model.

No Lightning here: the LightningModule orchestrates, this module computes.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from coattn.coattention import CoAttentionCascade, PreparedText, masked_mean
from coattn.features import SequenceFeatures
from coattn.loss import Temperature

log = logging.getLogger(__name__)


class Projection(nn.Module):
    """Map to the joint space and L2-normalise. ``clap``: Linear-ReLU-Linear, LAION-CLAP's head.

    ``batch_norm`` standardises each input feature over the batch first (see ``feature_norm``).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: Literal["linear", "clap"] = "linear",
                 batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim) if batch_norm else nn.Identity()
        if kind == "clap":
            self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
        else:
            self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.norm(x)), dim=-1)


class InputProjection(nn.Module):
    """Encoder states -> cascade width, optionally standardised per feature over real positions."""

    def __init__(self, in_dim: int, width: int, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim) if batch_norm else None
        self.proj = nn.Linear(in_dim, width)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:  # statistics from real frames/tokens only, never from padding
            normed = torch.zeros_like(states)
            normed[mask] = self.norm(states[mask])
            states = normed
        return self.proj(states)


class CoAttnModel(nn.Module):
    """Encoders + cascade + heads. See the module docstring for the two scores."""

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, cascade: CoAttentionCascade,
                 embed_dim: int = 512, temperature: float = 0.07, learn_temperature: bool = True,
                 dual_pooling: Literal["mean", "encoder"] = "mean",
                 dual_projection: Literal["linear", "clap"] = "linear",
                 clap_checkpoint: str | None = None, feature_norm: bool = False):
        super().__init__()
        self.audio_encoder, self.text_encoder, self.cascade = audio_encoder, text_encoder, cascade
        self.dual_pooling = dual_pooling
        da, dt = audio_encoder.out_dim, text_encoder.out_dim
        self.dual_audio = Projection(da, embed_dim, dual_projection, feature_norm)
        self.dual_text = Projection(dt, embed_dim, dual_projection, feature_norm)
        self.dual_temperature = Temperature(temperature, learn_temperature)
        if self.has_pairwise:
            d = cascade.width
            self.audio_in = InputProjection(da, d, feature_norm)
            self.text_in = InputProjection(dt, d, feature_norm)
            self.pair_audio, self.pair_text = Projection(d, embed_dim), Projection(d, embed_dim)
            self.pair_temperature = Temperature(temperature, learn_temperature)
        if clap_checkpoint:
            self.load_clap_projections(clap_checkpoint, dual_projection)

    @property
    def has_pairwise(self) -> bool:
        return self.cascade.kind != "none"

    def load_clap_projections(self, path: str, kind: str) -> None:
        """Start the dual heads from LAION-CLAP's ``audio_projection.*`` / ``text_projection.*``."""
        from coattn.encoders import load_clap_state_dict

        if kind != "clap":
            raise ValueError(f"clap_checkpoint {path!r} holds CLAP's MLP projections: set "
                             "model.dual_projection: clap to load them")
        state = load_clap_state_dict(path)
        for prefix, head in (("audio_projection.", self.dual_audio), ("text_projection.", self.dual_text)):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise ValueError(f"{path}: no '{prefix}*' keys; is this a LAION-CLAP checkpoint?")
            try:
                head.proj.load_state_dict(sub)
            except RuntimeError as err:
                raise ValueError(f"{path}: '{prefix}*' does not fit this model "
                                 f"(encoder width or embed_dim differ): {err}") from None
        log.info("loaded CLAP projections from %s", path)

    # ---- encoding: once per clip / caption --------------------------------------------------
    def encode_audio(self, waveform: torch.Tensor) -> SequenceFeatures:
        return self.audio_encoder(waveform)

    def encode_text(self, captions: list[str]) -> SequenceFeatures:
        return self.text_encoder(captions)

    def dual_embed_audio(self, feats: SequenceFeatures) -> torch.Tensor:
        pooled = feats.pooled if self.dual_pooling == "encoder" else masked_mean(feats.states, feats.mask)
        return self.dual_audio(pooled)

    def dual_embed_text(self, feats: SequenceFeatures) -> torch.Tensor:
        pooled = feats.pooled if self.dual_pooling == "encoder" else masked_mean(feats.states, feats.mask)
        return self.dual_text(pooled)

    def prepare_text(self, feats: SequenceFeatures) -> PreparedText:
        """Per-caption part of the pair score (for ``iterating``: the whole text stream)."""
        prep = self.cascade.prepare_text(self.text_in(feats.states, feats.mask), feats.mask)
        if prep.pooled is not None:  # text vector is pair-independent: project it once
            prep.pooled = self.pair_text(prep.pooled)
        return prep

    def prepare_audio(self, feats: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_in(feats.states, feats.mask), feats.mask

    # ---- pair scores ------------------------------------------------------------------------
    def score_pairs(self, text: PreparedText, ti: torch.Tensor, audio: tuple[torch.Tensor, torch.Tensor],
                    aj: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the P pairs (caption ti[p], clip aj[p]) after co-attention: (P,)."""
        t, a = self.cascade(text, ti, audio[0], audio[1], aj)
        if text.pooled is None:
            t = self.pair_text(t)
        return (t * self.pair_audio(a)).sum(-1)

    def score_grid(self, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """All N x M pairs at once: (N, M). The training path (B x B); evaluation tiles it."""
        n, m = len(text), audio[0].shape[0]
        ti = torch.arange(n, device=audio[0].device).repeat_interleave(m)
        aj = torch.arange(m, device=audio[0].device).repeat(n)
        return self.score_pairs(text, ti, audio, aj).view(n, m)
