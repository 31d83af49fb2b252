"""``Retriever``: the one place that decides how captions are scored against clips.

    cascade none          s = s_dual                                   one matrix product
    mode: exact           s = s_pair on every (caption, clip) pair     N x M cascade passes (tiling.py);
                          under DDP each rank scores a slice of captions (N x M / W passes)
    mode: rerank          s_dual shortlists K clips per caption and K captions per clip, the
                          cascade re-scores that union, the rest ranks below in dual order
                          (rerank.py)                                  <= K (N + M) passes
    fusion lambda > 0     s = s_pair + lambda * s_dual on the pairs the cascade scored (both
                          branches are cosines: the dual one carries the "which events" evidence
                          the pair score may average away; lambda = 0 is the pair score alone)

It returns the scores together with the dual branch's own scores (what a shortlist starts from,
logged as ``dual_*`` metrics) and a record of what it did (mode, K, cascade passes), which
``metrics.json`` keeps. Validation, test, ``coattn search`` and the benchmarks all call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from coattn.distributed import gather_no_grad, rank_world
from coattn.errors import ConfigError
from coattn.features import SequenceFeatures
from coattn.model import CoAttnModel
from coattn.retrieval.rerank import compose, rescore
from coattn.retrieval.tiling import Precision, score_matrix


@dataclass
class Retrieval:
    """Scores of N captions x M clips (float32), the dual branch's scores, and what was done.

    ``pair`` holds the cascade's scores before fusion (None for cascade none) and ``shortlist`` the
    pairs it scored in ``rerank`` mode (None: every pair), so ``fused(lam)`` re-fuses at no cost
    (choosing lambda on validation).
    """

    scores: torch.Tensor
    dual: torch.Tensor
    info: dict = field(default_factory=dict)
    pair: torch.Tensor | None = None
    shortlist: torch.Tensor | None = None

    def fused(self, lam: float) -> torch.Tensor:
        if self.pair is None:
            return self.dual
        if self.shortlist is None:
            return self.pair + lam * self.dual if lam else self.pair
        return compose(self.pair, self.shortlist, self.dual, lam)


@dataclass
class Retriever:
    """How a model's captions are scored against its clips (module docstring).

    Args:
        mode: ``exact`` (the cascade scores every caption x clip pair) or ``rerank`` (two-stage: the
            dual encoder shortlists the ``rerank_k`` best clips per caption and captions per clip, the
            cascade re-scores that union). Ignored for cascade ``none``, which scores with its dual branch.
        rerank_k: shortlist length K of ``rerank``.
        tile_pairs: caption-clip pairs per cascade pass (the memory bound of scoring).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        fusion: lambda of ``s_pair + lambda * s_dual`` (0: the pair score alone); null: the model's
            own ``fusion_lambda`` (chosen on validation by ``evaluation.fusion: auto``; 0 if never chosen).
    """

    mode: Literal["exact", "rerank"] = "exact"
    rerank_k: int = 64
    tile_pairs: int = 16384
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    fusion: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "rerank"):
            raise ConfigError(f"evaluation mode must be 'exact' or 'rerank', got {self.mode!r}")
        if self.rerank_k < 1:
            raise ConfigError(f"rerank_k must be >= 1, got {self.rerank_k}")
        if self.tile_pairs < 1:
            raise ConfigError(f"tile_pairs must be >= 1, got {self.tile_pairs}")
        if isinstance(self.fusion, (int, float)) and not (self.fusion >= 0 and math.isfinite(self.fusion)):
            raise ConfigError(f"fusion (lambda of s_pair + lambda * s_dual) must be >= 0, got {self.fusion}")

    @torch.no_grad()
    def __call__(self, model: CoAttnModel, audio: SequenceFeatures, text: SequenceFeatures,
                 both_directions: bool = True, progress: bool | None = None, fusion: float | None = None,
                 sharded: bool = False) -> Retrieval:
        """Score every caption of ``text`` against every clip of ``audio`` (encoder outputs).

        ``both_directions=False``: text-to-audio only (search), so ``rerank`` shortlists clips only.
        ``fusion``: lambda for this call (default: the ``fusion`` field). The result's ``pair`` holds
        the pair scores before fusion (for the ``pair_*`` metrics).
        ``sharded=True`` (DDP; every rank of the default process group must call it, each with all the
        features): ``exact`` mode scores this rank's slice of captions (``tiling.shard_rows``: whole
        tiles of the one-process tiling) against all clips and gathers the slices, so every rank
        holds the matrix one process computes, bit for bit, for 1/W of the cascade passes. ``rerank`` (a few
        % of exact) and the dual branch run whole on every rank. One process: no effect.
        """
        lam = float(fusion if fusion is not None else self.fusion if self.fusion is not None else model.fusion_lambda)
        dual = model.dual_scores(audio, text)
        if not model.has_pairwise:
            return Retrieval(dual, dual, {"retrieval_mode": "dual", "cascade_passes": 0})
        precision: Precision = self.precision
        text_p, audio_p = model.prepare_text(text), model.prepare_audio(audio)
        if self.mode == "rerank":
            rescored, mask, cost = rescore(model, text_p, audio_p, dual, self.rerank_k, self.tile_pairs, precision,
                                           progress, both_directions)
            out = Retrieval(dual, dual, cost.as_dict(), compose(rescored, mask, dual), mask)
        else:
            n, m = dual.shape
            rank, world = rank_world() if sharded else (0, 1)
            if world > 1:
                pair = gather_no_grad(score_matrix(model, text_p, audio_p, self.tile_pairs, precision, progress,
                                                   shard=(rank, world)))
            else:
                pair = score_matrix(model, text_p, audio_p, self.tile_pairs, precision, progress)
            out = Retrieval(dual, dual, {"retrieval_mode": "exact", "cascade_passes": n * m,
                                         "cascade_passes_exact": n * m, "cascade_cost_fraction": 1.0}, pair)
        out.scores = out.fused(lam)
        out.info["fusion_lambda"] = lam
        return out
