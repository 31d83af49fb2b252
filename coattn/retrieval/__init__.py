"""Scoring captions against clips at scale: the tiled engine (``tiling``), two-stage re-ranking
(``rerank``) and the ``Retriever`` that chooses between them."""
from __future__ import annotations

from coattn.retrieval.rerank import RerankInfo, rerank_matrix, shortlist_mask
from coattn.retrieval.retriever import Retrieval, Retriever
from coattn.retrieval.tiling import score, score_matrix, score_pair_list, score_rows

__all__ = ["RerankInfo", "Retrieval", "Retriever", "rerank_matrix", "score", "score_matrix", "score_pair_list",
           "score_rows", "shortlist_mask"]
