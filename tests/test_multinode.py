"""Past one machine (issue 12, part 3b): 2 "nodes" x 1 process, launched as a cluster launches them
(``torchrun --nnodes 2 --node_rank 0/1``, rendezvous on 127.0.0.1, gloo), train and evaluate as one
process does on the combined batch.

The training setting is tests/test_ddp_training.py's (dual-encoder head, frozen towers, 8 training
clips: the 2 x 4 batches hold the 1 x 8 batch), so the same float tolerances apply. Evaluation: the
validation metrics of both fits agree, and the 2-node ``coattn test`` of the trained checkpoint gives
exactly the metrics and scores of a 1-process ``coattn test`` of it (sharded exact scoring; 5
evaluation clips, not divisible by 2).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reliability_helpers import coattn_cmd, read_metrics, subprocess_env, tiny_fit_args
from tests.test_ddp import _free_port


def _torchrun() -> list[str]:
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _args(root, batch: int, nodes: int) -> list[str]:
    args = [*tiny_fit_args(root, epochs=2, steps=1), "--model.cascade.init_args.kind=none",
            "--model.text_encoder.init_args.freeze=true", f"--data.init_args.batch_size={batch}",
            "--model.feature_norm=false", "--data.init_args.train_items=clip", "--model.optim.warmup_steps=1",
            "--trainer.devices=1", f"--trainer.num_nodes={nodes}"]
    return args + (["--trainer.strategy=ddp"] if nodes > 1 else [])


def _two_nodes(cmd: list[str], cwd: Path) -> None:
    """Start node 0 and node 1 (one torchrun agent each, 1 process per node) and wait for both."""
    port = _free_port()
    procs = [subprocess.Popen([*_torchrun(), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "coattn", *cmd],
                              cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    outs = []
    try:
        outs = [p.communicate(timeout=540) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for node, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {node}:\n{out[-2000:]}\n{err[-4000:]}"
        assert f"GLOBAL_RANK: {node}, MEMBER: {node + 1}/2" in out + err  # Lightning saw 2 nodes x 1 process


def _one_process(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run([*coattn_cmd(), *cmd], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def eight_clips(tmp_path_factory):
    from coattn.cli import main

    root = tmp_path_factory.mktemp("eight_clips_5_eval")
    assert main(["synth", str(root), "--seed", "2", "--n-train", "8", "--n-val", "2", "--n-eval", "5",
                 "--seconds", "2"]) == 0
    return root


@pytest.mark.ddp
@pytest.mark.slow
def test_two_nodes_train_and_evaluate_as_one_process(eight_clips, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _one_process(["fit", *_args(eight_clips, batch=8, nodes=1)], one)
    _two_nodes(["fit", *_args(eight_clips, batch=4, nodes=2)], two)
    ckpt = two / "runs/demo_scratch/checkpoints/last.ckpt"
    a = torch.load(one / "runs/demo_scratch/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2
    for o1, o2 in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert o1["exp_avg"].abs().sum() > 0  # something was learned
        torch.testing.assert_close(o2["exp_avg"], o1["exp_avg"], rtol=1e-3,
                                   atol=max(1e-8, 1e-4 * o1["exp_avg"].abs().max().item()))
    for k, v in a["state_dict"].items():  # tolerance as tests/test_ddp_training.py: a tenth of one Adam step
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-4, msg=k)
    # the validation metrics of both epochs (rank-based: the float noise of the weights moves no rank)
    val = [read_metrics(next((d / "runs/demo_scratch/logs").glob("version_*/metrics.csv"))) for d in (one, two)]
    assert sorted(val[0]) == sorted(val[1]) == [0, 1] and val[0][1]
    assert val[1] == {e: pytest.approx(m, abs=1e-6) for e, m in val[0].items()}

    # evaluation: the 2-node checkpoint tested on 2 nodes and on 1 process
    results = {}
    for name, run in (("one", _one_process), ("two", _two_nodes)):
        cwd = tmp_path / f"test_{name}"
        cwd.mkdir()
        nodes = 2 if name == "two" else 1
        run(["test", *_args(eight_clips, batch=4, nodes=nodes), "--model.evaluation.tile_pairs=10",
             f"--ckpt_path={ckpt}"], cwd)
        res = cwd / "runs/demo_scratch/results/test"
        results[name] = (json.loads((res / "metrics.json").read_text()), np.load(res / "scores.npz"))
    (m1, s1), (m2, s2) = results["one"], results["two"]
    assert m1["extra"]["n_clips"] == m2["extra"]["n_clips"] == 5
    assert m2["metrics"] == m1["metrics"] and m2.get("ci") == m1.get("ci")
    assert np.array_equal(s2["scores"], s1["scores"])
