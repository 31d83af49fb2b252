"""Exact scoring of every caption against every clip, in tiles of pairs (bounded memory).

A co-attention score needs one cascade pass per (caption, clip) pair: Clotho's evaluation split
is 5,225 x 1,045 = 5.46 M passes. Encoders run once per item beforehand; here only the
pair-dependent cascade runs, ``tile_pairs`` pairs per forward pass (memory ~ tile_pairs x
(L + T) x width activations), never ranking inside a batch.
"""
from __future__ import annotations

import math

import torch

from coattn.coattention import PreparedText
from coattn.model import CoAttnModel


def tile_shape(n_text: int, n_audio: int, tile_pairs: int) -> tuple[int, int]:
    """Captions x clips per tile with at most ``tile_pairs`` pairs: all clips of a caption row
    when they fit (fewest passes over the captions), otherwise a slice of the clips."""
    clips = max(1, min(n_audio, tile_pairs))
    captions = max(1, min(n_text, tile_pairs // clips))
    return captions, clips


@torch.no_grad()
def score_matrix(model: CoAttnModel, text: PreparedText, audio: tuple[torch.Tensor, torch.Tensor],
                 tile_pairs: int = 16384) -> torch.Tensor:
    """(N captions, M clips) cosine scores of the co-attention branch, float32 on the features' device."""
    n, m = len(text), audio[0].shape[0]
    out = torch.empty(n, m, dtype=torch.float32, device=audio[0].device)
    tn, tm = tile_shape(n, m, tile_pairs)
    for i0 in range(0, n, tn):
        i1 = min(n, i0 + tn)
        sub_text = PreparedText(text.states[i0:i1], text.mask[i0:i1],
                                None if text.pooled is None else text.pooled[i0:i1])
        for j0 in range(0, m, tm):
            j1 = min(m, j0 + tm)
            out[i0:i1, j0:j1] = model.score_grid(sub_text, (audio[0][j0:j1], audio[1][j0:j1])).float()
    return out


def n_tiles(n_text: int, n_audio: int, tile_pairs: int) -> int:
    tn, tm = tile_shape(n_text, n_audio, tile_pairs)
    return math.ceil(n_text / tn) * math.ceil(n_audio / tm)
