"""Scoring-engine benchmark: pairs/s of the engine vs a per-pair loop, achieved GFLOP/s vs the
machine's measured matmul GFLOP/s, peak memory. Everything is measured side by side in one run.

    python benchmarks/scoring.py                              # CPU, the paper's cascade size, subsampled
    python benchmarks/scoring.py --device cuda --dtype bf16 --full   # Clotho evaluation size on a GPU
    python benchmarks/scoring.py --ddp 2 --captions 16        # sharded exact scoring: 1 vs 2 processes

Model: the ``iterating`` cascade at the real configuration (width 512, 8 heads, depth 5, FFN 2048)
on random features (L = 32 tokens, T = 32 frames, 768-d encoders; the encoders do not run: the
engine scores pre-encoded features). FLOPs are counted analytically (matmuls and attention,
``CoAttentionCascade.flops_per_pair``; the engine's own count ``executed_flops_per_pair`` leaves
out the work it hoists out of the pair loop). On CPU the Clotho-size time (5,225 x 1,045 pairs)
is extrapolated from a subsample, and says so.

Rows: ``loop`` = ``model.score_pairs`` called one pair at a time (the naive Python loop);
``tiled`` = ``model.score_grid`` per tile (the per-clip work redone for every caption tile);
``engine`` = ``coattn.retrieval.score_matrix``.

``--ddp W``: the sharded exact evaluation (``Retriever(..., sharded=True)``) of the subsample on W
gloo processes of T/W threads each, next to one process of T threads (T = this process's torch
threads): the same cores, split between processes instead of threads. Each rank scores whole
caption tiles (``tiling.shard_rows``), then the slices are gathered; timed from a barrier to the
gathered matrix (process start-up is not counted). Every table starts and ends with the load average.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import torch
from torch import nn

from loadavg import LoadAverage

CLOTHO = (5225, 1045)


class _Enc(nn.Module):
    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim


def build(args, device):
    from coattn.coattention import CoAttentionCascade
    from coattn.features import SequenceFeatures
    from coattn.model import CoAttnModel

    torch.manual_seed(0)
    cascade = CoAttentionCascade("iterating", depth=args.depth, width=args.width, heads=args.heads,
                                 ffn_dim=args.ffn, dropout=0.1)
    model = CoAttnModel(_Enc(args.enc_dim), _Enc(args.enc_dim), cascade, embed_dim=512).to(device).eval()

    def feats(n, length):
        s = torch.randn(n, length, args.enc_dim, device=device)
        mask = torch.ones(n, length, dtype=torch.bool, device=device)
        mask[n // 2:, length * 3 // 4:] = False  # some padding, as real captions have
        return SequenceFeatures(s, mask, s.mean(1))

    return model, feats


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, dtype, n=2048, reps=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


class PeakRSS:
    """Peak resident memory above the starting level, sampled every 5 ms (CPU), or CUDA's counter."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.rss()
            self.t = threading.Thread(target=self._run, daemon=True)
            self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.t.join()
            self.peak = max(self.peak, self.rss() - self.base)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype (CUDA only)")
    p.add_argument("--full", action="store_true", help="score the whole Clotho evaluation size (5,225 x 1,045)")
    p.add_argument("--captions", type=int, default=8, help="captions in the subsample (default 8)")
    p.add_argument("--clips", type=int, default=64, help="clips in the subsample (default 64)")
    p.add_argument("--loop-pairs", type=int, default=24, help="pairs timed in the per-pair loop")
    p.add_argument("--tile-pairs", type=int, default=None, help="pairs per pass (default 256 on CPU, 16384 on CUDA)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each path counts")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--enc-dim", type=int, default=768)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--audio-len", type=int, default=32)
    p.add_argument("--ddp", type=int, default=0, metavar="W",
                   help="time sharded exact scoring on W gloo processes next to 1 process (CPU)")
    args = p.parse_args(argv)
    with LoadAverage():
        return ddp_compare(args) if args.ddp else run(args)


def run(args) -> int:

    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU is present on this machine (torch.cuda.is_available() is False): the CUDA "
              "variant of the scoring benchmark was not run. Run it on a GPU machine:\n"
              "  python benchmarks/scoring.py --device cuda --dtype bf16 --full")
        return 0
    if args.device == "cpu" and args.dtype != "fp32":
        print(f"note: --dtype {args.dtype} applies on CUDA only; the CPU engine runs in fp32")
        args.dtype = "fp32"

    from coattn.retrieval.tiling import executed_flops_per_pair, score_matrix, tile_shape

    device = torch.device(args.device)
    if args.tile_pairs is None:
        args.tile_pairs = 16384 if device.type == "cuda" else 256
    precision = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[args.dtype]
    model, feats = build(args, device)
    n, m = CLOTHO if args.full else (args.captions, args.clips)
    L, T = args.text_len, args.audio_len
    with torch.no_grad():
        text = model.prepare_text(feats(n, L))
        audio = model.prepare_audio(feats(m, T))
    naive_fpp = model.cascade.flops_per_pair(L, T)
    exec_fpp = executed_flops_per_pair(model.cascade, L, T, pairs_per_caption=m)
    mm_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    mm = matmul_gflops(device, mm_dtype)

    # warm-up (allocator, kernels) on a small tile
    score_matrix(model, text.index(slice(0, 1)), audio, args.tile_pairs, precision, progress=False)
    pairs = n * m

    # the previous engine: model.score_grid per tile, nothing hoisted (on a few caption rows)
    from coattn.retrieval.tiling import autocast
    tn, tm = tile_shape(n, m, args.tile_pairs)
    n_tiled = min(n, max(tn, 2))

    def tiled():
        with torch.no_grad(), autocast(device, precision):
            for i0 in range(0, n_tiled, tn):
                i1 = min(n_tiled, i0 + tn)
                sub = text.index(slice(i0, i1))
                for j0 in range(0, m, tm):
                    model.score_grid(sub, audio.index(slice(j0, j0 + tm)))

    # the per-pair loop
    k = args.loop_pairs
    ti = torch.arange(k, device=device) % n
    aj = torch.arange(k, device=device) % m

    def loop():
        with torch.no_grad(), autocast(device, precision):
            for p_ in range(k):
                model.score_pairs(text, ti[p_:p_ + 1], audio, aj[p_:p_ + 1])

    # interleaved repeats, best time of each (the machine may be shared: the best run is the
    # least disturbed one); the full CUDA run is timed once
    best = {"loop": float("inf"), "tiled": float("inf"), "engine": float("inf")}
    mem = None
    for r in range(1 if args.full else args.repeats):
        if not args.full:
            best["loop"] = min(best["loop"], timed(loop, device)[0])
            best["tiled"] = min(best["tiled"], timed(tiled, device)[0])
        with PeakRSS(device) as mem_r:
            t = timed(lambda: score_matrix(model, text, audio, args.tile_pairs, precision, progress=None), device)[0]
        best["engine"] = min(best["engine"], t)
        mem = mem_r if mem is None or mem_r.peak > mem.peak else mem
    if args.full:  # a short loop and tiled run on the GPU as well, for the ratios
        best["loop"] = timed(loop, device)[0]
        best["tiled"] = timed(tiled, device)[0]
    t_engine = best["engine"]
    eng_pps = pairs / t_engine
    tiled_pps = n_tiled * m / best["tiled"]
    loop_pps = k / best["loop"]

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"
    print(f"# scoring benchmark: {dev_name}, {args.dtype}, torch {torch.__version__}")
    print(f"cascade iterating width {args.width}, {args.heads} heads, depth {args.depth}, FFN {args.ffn}; "
          f"L={L} tokens, T={T} frames; tile_pairs={args.tile_pairs}; best of {1 if args.full else args.repeats} "
          f"interleaved runs")
    print(f"FLOPs per pair: naive pass {naive_fpp / 1e9:.3f} GFLOP, engine (hoisted) {exec_fpp / 1e9:.3f} GFLOP")
    print(f"measured matmul ({2048}^3, {args.dtype}): {mm:.1f} GFLOP/s\n")
    print("| path | pairs timed | pairs/s | x loop | GFLOP/s executed | % of matmul | naive-equivalent GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cnt, pps, fpp in (("per-pair loop", k, loop_pps, naive_fpp),
                                ("tiled, score_grid per tile", n_tiled * m, tiled_pps, naive_fpp),
                                ("engine", pairs, eng_pps, exec_fpp)):
        g = pps * fpp / 1e9
        print(f"| {name} | {cnt:,} | {pps:,.1f} | {pps / loop_pps:.1f} | {g:.1f} | {100 * g / mm:.0f} % | "
              f"{pps * naive_fpp / 1e9:.1f} |")
    print(f"\nengine peak memory above baseline: {mem.peak / 2 ** 20:.0f} MiB "
          f"({'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'RSS sampled every 5 ms'})")
    clotho = CLOTHO[0] * CLOTHO[1]
    if args.full:
        print(f"Clotho evaluation size {CLOTHO[0]:,} x {CLOTHO[1]:,} = {clotho:,} pairs: {t_engine:.1f} s (measured)")
    else:
        print(f"Clotho evaluation size {CLOTHO[0]:,} x {CLOTHO[1]:,} = {clotho:,} pairs: "
              f"{clotho / eng_pps:,.0f} s = {clotho / eng_pps / 3600:.1f} h (EXTRAPOLATED from {pairs:,} pairs); "
              f"per-pair loop: {clotho / loop_pps / 3600:.1f} h (extrapolated)")
    ok20 = eng_pps / loop_pps >= 20
    ok50 = eng_pps * exec_fpp / 1e9 >= 0.5 * mm
    print(f"targets: >= 20x the loop: {'met' if ok20 else 'NOT met'} ({eng_pps / loop_pps:.1f}x); "
          f">= 50 % of matmul GFLOP/s: {'met' if ok50 else 'NOT met'} ({100 * eng_pps * exec_fpp / 1e9 / mm:.0f} %)")
    return 0


# ---- --ddp W: sharded exact scoring, 1 vs W processes -------------------------------------------
def _ddp_inputs(args):
    model, feats = build(args, torch.device("cpu"))
    with torch.no_grad():
        return model, feats(args.clips, args.audio_len), feats(args.captions, args.text_len)


def _ddp_worker(rank: int, args, port: int, threads: int, out: str) -> None:
    import torch.distributed as dist

    from coattn.retrieval import Retriever

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ddp)
    try:
        model, audio, text = _ddp_inputs(args)
        retriever = Retriever(mode="exact", tile_pairs=args.tile_pairs, precision="fp32", fusion=0.0)
        retriever(model, audio.index(slice(0, 2)), text.index(slice(0, 2)), sharded=True, progress=False)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            dist.barrier()
            t = time.perf_counter()
            scores = retriever(model, audio, text, sharded=True, progress=False).scores
            best = min(best, time.perf_counter() - t)
        if rank == 0:
            torch.save({"seconds": best, "scores": scores}, out)
    finally:
        dist.destroy_process_group()


def ddp_compare(args) -> int:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    from coattn.retrieval import Retriever
    from coattn.retrieval.tiling import shard_rows

    if args.device != "cpu":
        print("--ddp times CPU processes (gloo); on GPUs use `coattn test` with --trainer.devices=W")
        return 2
    args.tile_pairs = args.tile_pairs or 256
    threads = torch.get_num_threads()
    per_rank = max(1, threads // args.ddp)
    model, audio, text = _ddp_inputs(args)
    retriever = Retriever(mode="exact", tile_pairs=args.tile_pairs, precision="fp32", fusion=0.0)
    retriever(model, audio.index(slice(0, 2)), text.index(slice(0, 2)), progress=False)  # warm-up
    one = {threads: float("inf"), per_rank: float("inf")}  # 1 process: all threads, and a rank's share
    for _ in range(args.repeats):
        for n_threads in one:
            torch.set_num_threads(n_threads)
            t = time.perf_counter()
            ref = retriever(model, audio, text, progress=False).scores
            one[n_threads] = min(one[n_threads], time.perf_counter() - t)
    torch.set_num_threads(threads)
    with socket.socket() as s_:  # a free port for the rendezvous (closed before rank 0 listens on it)
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_ddp_worker, args=(args, port, per_rank, out), nprocs=args.ddp, join=True)
        res = torch.load(out, weights_only=True)
    pairs = args.captions * args.clips
    slices = [shard_rows(args.captions, args.clips, args.tile_pairs, r, args.ddp) for r in range(args.ddp)]
    print(f"# sharded exact scoring: {args.captions} captions x {args.clips} clips = {pairs:,} pairs, iterating "
          f"width {args.width}, depth {args.depth}, fp32, tile_pairs={args.tile_pairs}, best of {args.repeats}")
    print(f"caption slices per rank: {slices}; {os.cpu_count()} cores visible")
    print("| setup | threads per process | seconds | pairs/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    rows = [("1 process", n, sec) for n, sec in one.items()] + [
        (f"{args.ddp} processes (gloo, sharded)", per_rank, res["seconds"])]
    for name, n_threads, sec in rows:
        print(f"| {name} | {n_threads} | {sec:.2f} | {pairs / sec:,.1f} | {one[threads] / sec:.2f}x |")
    same = torch.equal(res["scores"], ref)  # ref: 1 process at a rank's thread count
    print("gathered matrix vs 1 process at the same threads per process: "
          + ("bit-identical" if same else f"max abs diff {(res['scores'] - ref).abs().max().item():.2e}"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
