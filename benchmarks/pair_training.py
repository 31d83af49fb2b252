"""Pair-training benchmark: B x B in-batch pairs vs hard-K mining, peak memory and step time.

    python benchmarks/pair_training.py                          # B = 16, 64, 256, the demo's cascade, CPU
    python benchmarks/pair_training.py --width 512 --depth 5 --heads 8 --checkpointing   # the paper's cascade
    python benchmarks/pair_training.py --device cuda            # on a GPU (peak = torch.cuda.max_memory_allocated)

One training step (forward, loss, backward) of ``coattn.loss.RetrievalLoss`` on random encoder
features (L = 32 tokens, T = 32 frames, 768-d: the towers do not run, their cost does not depend on
the pair mode) with ``pair_negatives: local`` (every caption x every clip: B^2 cascade passes) and
``pair_negatives: hard`` (each caption against its clip + K hardest + R random clips, each clip
against its caption + K + R captions: 2 B (1 + K + R) passes). Every point runs in its own process
under a memory cap (``--mem-gb`` of address space beyond what the process holds once the model and
features are built; RLIMIT_AS on CPU): a point that does not fit reports ``OOM`` instead of taking
the machine down. Peak memory on CPU is the child's max RSS minus its RSS before the first step.
The machine's load average is printed before and after:
on a shared machine only the ratios of one run mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def child(a: argparse.Namespace) -> dict:
    import torch
    from torch import nn

    from coattn.coattention import CoAttentionCascade
    from coattn.features import SequenceFeatures
    from coattn.loss import RetrievalLoss
    from coattn.model import CoAttnModel

    class Enc(nn.Module):  # the towers do not run: the loss takes their features
        def __init__(self, out_dim: int):
            super().__init__()
            self.out_dim = out_dim

    device = torch.device(a.device)
    torch.manual_seed(0)
    cascade = CoAttentionCascade("iterating", depth=a.depth, width=a.width, heads=a.heads, ffn_dim=4 * a.width,
                                 dropout=0.0, positions="relative", checkpointing=a.checkpointing)
    model = CoAttnModel(Enc(a.enc_dim), Enc(a.enc_dim), cascade, embed_dim=a.embed_dim).to(device).train()
    b = a.batch

    def feats(length: int) -> SequenceFeatures:
        s = torch.randn(b, length, a.enc_dim, device=device)
        return SequenceFeatures(s, torch.ones(b, length, dtype=torch.bool, device=device), s.mean(1))

    text, audio = feats(32), feats(32)
    ids = torch.arange(b, device=device)
    loss_fn = RetrievalLoss(pair_negatives=a.mode, pair_k=a.k, pair_random=a.r)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, audio, text, ids, ids)["loss"]
        loss.backward()
        opt.step()
        return float(loss)

    if device.type == "cpu":  # the cap: what the process holds now + mem_gb of address space
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        cap = vm + int(a.mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocator, AdamW state); its peak counts
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20  # KiB -> GiB
    passes = b * b if a.mode == "local" else 2 * b * (1 + min(a.k + a.r, b - 1))
    return {"step_s": min(times), "peak_gib": peak, "passes": passes}


def run_point(a: argparse.Namespace, mode: str, batch: int) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode, "--batch", str(batch),
            "--device", a.device, "--width", str(a.width), "--depth", str(a.depth), "--heads", str(a.heads),
            "--enc-dim", str(a.enc_dim), "--embed-dim", str(a.embed_dim), "--k", str(a.k), "--r", str(a.r),
            "--steps", str(a.steps), "--mem-gb", str(a.mem_gb)] + (["--checkpointing"] if a.checkpointing else [])
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {a.timeout} s"}
    if p.returncode == 0:
        return {"status": "ok", **json.loads(p.stdout.strip().splitlines()[-1])}
    oom = any(w in p.stderr for w in ("MemoryError", "out of memory", "DefaultCPUAllocator", "std::bad_alloc"))
    return {"status": f"OOM (> {a.mem_gb:g} GiB)" if oom or p.returncode in (-9, 137) else
            "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1][:80]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the cascade layers")
    p.add_argument("--enc-dim", type=int, default=768)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--k", type=int, default=8, help="hard negatives per caption and per clip")
    p.add_argument("--r", type=int, default=8, help="random negatives per caption and per clip")
    p.add_argument("--steps", type=int, default=2, help="timed steps per point (the fastest is reported)")
    p.add_argument("--mem-gb", type=float, default=8.0, help="memory cap of each point (CPU: address space)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per point")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="local", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return
    print(f"pair training: iterating cascade width {a.width}, depth {a.depth}, {a.enc_dim}-d features, 32 tokens x "
          f"32 frames, hard = K {a.k} + R {a.r}, checkpointing {a.checkpointing}, device {a.device}, "
          f"cap {a.mem_gb:g} GiB")
    print(f"load average before: {load()}")
    print("| B | mode | cascade passes | step (s) | peak memory (GiB) | passes/s |")
    print("|---:|---|---:|---:|---:|---:|")
    for b in a.batches:
        for mode in ("local", "hard"):
            r = run_point(a, mode, b)
            name = "B x B" if mode == "local" else f"hard K={a.k} R={a.r}"
            if r["status"] == "ok":
                print(f"| {b} | {name} | {r['passes']:,} | {r['step_s']:.2f} | {r['peak_gib']:.2f} | "
                      f"{r['passes'] / r['step_s']:,.0f} |", flush=True)
            else:
                print(f"| {b} | {name} | {b * b if mode == 'local' else 2 * b * (1 + a.k + a.r):,} | {r['status']} | "
                      "- | - |", flush=True)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
