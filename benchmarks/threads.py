"""CPU training threads: 1 torch thread vs 2 vs 2 with a passive OpenMP wait, idle and beside a competing job.

    python benchmarks/threads.py                 # ~2-3 minutes on 2 cores
    python benchmarks/threads.py --seconds 4 --repeats 3

On a shared 2-core machine the default (torch takes every core: 2 threads) once ran a demo fit
2.8x slower than 1 thread, because OpenMP threads spin-wait for each other and a busy core makes
every parallel region wait for its slowest thread. This measures it. The workload is the shape of
a demo training step: a log-mel-sized input (batch 8, 64 mel x 256 frames) through a small
convolutional stem and two transformer layers (width 128), a contrastive loss, backward and an
Adam step.

Each configuration runs in its own subprocess, because the thread count and ``OMP_WAIT_POLICY``
must be set before torch is imported:

    1 thread         OMP_NUM_THREADS=1
    2 threads        OMP_NUM_THREADS=2 (torch's default on 2 cores)
    2 passive        OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE (idle threads sleep instead of spinning)

under two conditions: ``idle`` (whatever else the machine runs) and ``busy`` (a second process
spinning a 1-thread matmul loop, i.e. one core taken by someone else). Printed: median seconds per
step, steps per second, the ratio to 1 thread in the same condition, and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}


def worker(seconds: float) -> None:
    """Run training steps for ``seconds`` (after 3 warm-up steps); print JSON step times."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.GELU(),
                                      nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU())
            self.proj = nn.Linear(64 * 16, 128)
            layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.1, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2)
            self.text = nn.Sequential(nn.Embedding(1000, 128), nn.Linear(128, 128))

        def forward(self, mel, ids):
            x = self.stem(mel)  # (B, 64, 16, T/4)
            x = self.proj(x.flatten(1, 2).transpose(1, 2))
            a = self.body(x).mean(1)
            t = self.text(ids).mean(1)
            return nn.functional.normalize(a, dim=-1), nn.functional.normalize(t, dim=-1)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    mel, ids = torch.randn(8, 1, 64, 256), torch.randint(0, 1000, (8, 20))
    target = torch.arange(8)

    def step():
        a, t = net(mel, ids)
        logits = a @ t.T / 0.07
        loss = nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"threads": torch.get_num_threads(), "times": times}))


def spin() -> None:
    """The competing job: a 1-thread matmul loop until killed."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def measure(name: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(CONFIGS[name])
    out = subprocess.run([sys.executable, __file__, "--worker", "--seconds", str(seconds)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per configuration and repeat")
    ap.add_argument("--repeats", type=int, default=2, help="rounds (configurations interleaved in each)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spin", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.seconds)
    if a.spin:
        return spin()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loadavg import load_average

    print(f"{os.cpu_count()} cores; {a.repeats} rounds x {a.seconds:g} s per configuration and condition", flush=True)
    results: dict[tuple[str, str], list[float]] = {}
    loads = {}
    for condition in ("idle", "busy"):
        rival = None
        if condition == "busy":
            rival = subprocess.Popen([sys.executable, __file__, "--spin"], stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        try:
            loads[condition] = [load_average()]
            for _ in range(a.repeats):
                for name in CONFIGS:
                    results.setdefault((condition, name), []).extend(measure(name, a.seconds)["times"])
            loads[condition].append(load_average())
        finally:
            if rival is not None:
                rival.kill()
                rival.wait()
        print(f"{condition}: load average before {loads[condition][0]}, after {loads[condition][1]}", flush=True)
    print()
    print(f"| condition | threads | median s/step | steps/s | x 1 thread (speed) |")
    print("|---|---|---:|---:|---:|")
    for condition in ("idle", "busy"):
        base = statistics.median(results[(condition, "1 thread")])
        for name in CONFIGS:
            med = statistics.median(results[(condition, name)])
            print(f"| {condition} | {name} | {med:.4f} | {1 / med:.1f} | {base / med:.2f} |")


if __name__ == "__main__":
    main()
