"""Two CPU processes (gloo) give what one process gives: the dual-encoder loss gradient on the
combined batch, and exactly the evaluation scores and metrics (sharded exact scoring) on a split
whose size is not divisible by 2."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coattn.loss import global_nt_xent
from tests.conftest import REPO

DEMO = str(REPO / "experiments" / "demo_scratch.yaml")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(sizes: list[int]):
    """Fixed inputs of the combined batch, clip ids with repeats across the rank boundary, and
    the parameters (two projections + a temperature) every rank starts from."""
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    xt, xa = torch.randn(n, 6, generator=g), torch.randn(n, 7, generator=g)
    clip = torch.tensor([0, 1, 2, 3, 1, 4, 0, 5, 6, 2][:n])  # clips 0, 1, 2 appear on both ranks
    params = {"wt": torch.randn(5, 6, generator=g), "wa": torch.randn(5, 7, generator=g),
              "log_scale": torch.tensor(2.0)}
    return xt, xa, clip, params


def _loss_and_grads(xt, xa, clip, params):
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    xt, xa = xt.clone().requires_grad_(True), xa.clone().requires_grad_(True)
    t, a = F.normalize(xt @ p["wt"].t(), dim=-1), F.normalize(xa @ p["wa"].t(), dim=-1)
    loss = global_nt_xent(t, a, p["log_scale"].exp(), clip, clip)  # training items: caption b is of clip b
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in p.items()}, xt.grad, xa.grad


def _worker(rank: int, port: int, sizes: list[int], out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        xt, xa, clip, params = _problem(sizes)
        lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
        loss, grads, gxt, gxa = _loss_and_grads(xt[lo:hi], xa[lo:hi], clip[lo:hi], params)
        for g in grads.values():  # what DDP does to parameter gradients: the mean over ranks
            dist.all_reduce(g)
            g /= WORLD
        dist.all_reduce(loss)
        torch.save({"loss": loss / WORLD, "grads": grads, "gxt": gxt, "gxa": gxa},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("sizes", [[4, 4], [5, 3]], ids=["equal", "unequal"])
def test_dual_loss_gradient_matches_single_process(tmp_path, sizes):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), sizes, str(tmp_path)), nprocs=WORLD, join=True)
    xt, xa, clip, params = _problem(sizes)
    loss, grads, gxt, gxa = _loss_and_grads(xt, xa, clip, params)  # one process, combined batch
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.testing.assert_close(ranks[0]["loss"], loss, rtol=1e-5, atol=1e-6)
    for r in ranks:  # averaged parameter gradients = the single-process gradient
        for k in params:
            torch.testing.assert_close(r["grads"][k], grads[k], rtol=1e-5, atol=1e-6)
    # input gradients: rank r's rows of the gradient of sum_r loss_r = W x the combined loss
    g_text = torch.cat([r["gxt"] for r in ranks]) / WORLD
    g_audio = torch.cat([r["gxa"] for r in ranks]) / WORLD
    torch.testing.assert_close(g_text, gxt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_audio, gxa, rtol=1e-5, atol=1e-6)


# ---- evaluation through the CLI --------------------------------------------------------------
def _coattn() -> list[str]:
    script = Path(sys.executable).parent / "coattn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "coattn.cli"]


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_coattn(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def five_eval_clips(tmp_path_factory) -> Path:
    from coattn.cli import main

    root = tmp_path_factory.mktemp("five_eval")
    assert main(["synth", str(root), "--seed", "1", "--n-train", "4", "--n-val", "2", "--n-eval", "5",
                 "--seconds", "2"]) == 0
    return root


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_test_metrics_equal_one_process(five_eval_clips, tmp_path):
    common = ["--config", DEMO, f"--data.init_args.root={five_eval_clips}", "--data.init_args.batch_size=4",
              "--data.init_args.eval_batch_size=2", "--data.init_args.num_workers=0", "--model.evaluation.bootstrap=20",
              "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
              "--model.evaluation.tile_pairs=10"]  # 2 captions per tile, 13 tiles: both ranks score a slice
    _run(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"], tmp_path)
    ckpt = tmp_path / "runs/demo_scratch/checkpoints/last.ckpt"
    assert ckpt.is_file()
    out = {}
    for devices in (1, 2):
        # its own folder: `test --ckpt_path` takes model options (results_dir too) from the checkpoint
        cwd = tmp_path / f"devices{devices}"
        cwd.mkdir()
        extra = ["--trainer.strategy=ddp"] if devices > 1 else []
        _run(["test", *common, f"--trainer.devices={devices}", *extra, f"--ckpt_path={ckpt}"], cwd)
        res = cwd / "runs/demo_scratch/results/test"
        out[devices] = (json.loads((res / "metrics.json").read_text()), np.load(res / "scores.npz"))
    (m1, s1), (m2, s2) = out[1], out[2]
    assert m1["extra"]["n_clips"] == m2["extra"]["n_clips"] == 5
    assert m1["extra"]["n_captions"] == m2["extra"]["n_captions"] == 25
    assert m2["metrics"] == m1["metrics"]  # exactly, not approximately
    assert m2.get("ci") == m1.get("ci")
    for key in ("captions", "clip_names", "caption_clip"):
        assert (s1[key] == s2[key]).all(), key
    # bit for bit: each rank scored whole caption tiles of the one-process tiling (coattn.retrieval.tiling.
    # shard_rows) on features gathered in clip order; tests/test_ddp_sharded_eval.py proves it on fixed features
    assert np.array_equal(s2["scores"], s1["scores"]), np.abs(s2["scores"] - s1["scores"]).max()
