"""Sharded exact evaluation (issue 12, part 3): W ranks each score a slice of the captions and
gather the slices; the matrix and the metrics are those of one process, bit for bit.

Library level, on fixed features (the CLI path, with features encoded under DDP, is
tests/test_ddp.py::test_two_process_test_metrics_equal_one_process). 13 captions x 5 clips (odd:
the ranks' slices differ in size) and ``tile_pairs=10`` (2 captions per tile, 7 tiles: rank 0 gets
3 tiles, rank 1 gets 4, the last one partial). Every process runs 1 torch thread, like the CLI tests'
OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import os

import pytest
import torch

from coattn.retrieval import Retriever
from coattn.retrieval.tiling import shard_rows, tile_shape
from tests.test_coattention import feats, make_model
from tests.test_ddp import _free_port

WORLD, N, M, TILE = 2, 13, 5, 10
KINDS = ("iterating", "stacking")  # the hoisted path and the generic one
CAPTION_CLIP = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4])


def _inputs(kind: str):
    model = make_model(kind, depth=2)
    text = feats(N, 5, 20, [5, 4, 3, 2, 1, 5, 5, 3, 4, 2, 5, 1, 4])
    audio = feats(M, 6, 24, [6, 3, 5, 1, 6], seed=4)
    return model, audio, text


def _metrics(scores: torch.Tensor) -> dict[str, float]:
    from coattn.metrics import aggregate, per_query_metrics
    return aggregate(per_query_metrics(scores, CAPTION_CLIP))


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    import coattn.retrieval.retriever as retriever

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    rows_scored = []
    inner = retriever.score_matrix

    def counting(*args, **kwargs):  # how many caption rows this rank scored itself
        part = inner(*args, **kwargs)
        rows_scored.append(part.shape[0])
        return part

    retriever.score_matrix = counting
    try:
        out = {}
        for kind in KINDS:
            model, audio, text = _inputs(kind)
            result = Retriever(mode="exact", tile_pairs=TILE, fusion=0.5)(model, audio, text, sharded=True)
            out[kind] = {"scores": result.scores, "pair": result.pair, "rows": rows_scored[-1]}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        retriever.score_matrix = inner
        dist.destroy_process_group()


def test_shard_rows_are_whole_tiles_covering_every_caption():
    for n, m, tile, world in [(13, 5, 10, 2), (5225, 1045, 16384, 2), (5225, 1045, 16384, 8), (3, 5, 10, 4),
                              (1, 1, 1, 3), (100, 7, 64, 3)]:
        tn, _ = tile_shape(n, m, tile)
        bounds = [shard_rows(n, m, tile, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        for (lo, hi), (lo2, _) in zip(bounds, bounds[1:]):
            assert hi == lo2 and lo <= hi
        for lo, hi in bounds:
            assert lo % tn == 0 and (hi % tn == 0 or hi == n)
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= tn  # as even as whole tiles allow


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_sharded_scores_and_metrics_bit_identical_to_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind in KINDS:
            model, audio, text = _inputs(kind)
            one = Retriever(mode="exact", tile_pairs=TILE, fusion=0.5)(model, audio, text)
            assert [r[kind]["rows"] for r in ranks] == [6, 7]  # each rank scored its own slice only
            for r in ranks:  # every rank holds the whole matrix
                assert torch.equal(r[kind]["pair"], one.pair), kind
                assert torch.equal(r[kind]["scores"], one.scores), kind
                assert _metrics(r[kind]["scores"]) == _metrics(one.scores)
    finally:
        torch.set_num_threads(n_threads)
