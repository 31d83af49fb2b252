"""The paper's model at its real size on this CPU: a training step and an exact evaluation tile per
cascade kind, with peak memory, the projected cost of Clotho's evaluation, and the memory levers
(activation checkpointing and bf16 autocast at batch 32, B x B pairs; torch.compile at batch 8) side by side.

    python benchmarks/full_size.py --compile            # ~13 min (1 thread, shared machine); --quick: fewer rows
    python benchmarks/full_size.py --batch8 --batch32   # + the full model at B = 8 and 32 (~6 min, ~12 GB)
    python benchmarks/full_size.py --standins DIR       # reuse the stand-in files (benchmarks/standins.py)

Model (experiments/*_{single,stacking,iterating}.yaml): HTS-AT tiny (31.3 M, the LAION-CLAP layout,
random weights) + a roberta-base-sized RoBERTa (124.6 M, BPE tokenizer of the real Clotho captions)
+ the cascade (width 512, 8 heads, FFN 2048, depth 5; ``single``: 1) + heads; AdamW over everything
(towers trainable, as the configs). Inputs: 10 s random waveforms, real Clotho captions (max 32 tokens).

Rows, each measured in a fresh subprocess (peak RSS is a process's high-water mark, so rows must not
share one; "peak" = the process's peak RSS, weights and optimizer state included; "step peak" = above
the RSS the process held when the step began):

    step     one training step (forward, loss, backward, AdamW) on B clips x B captions: B^2 cascade
             passes; timed: the second of two steps (the first allocates AdamW's state; B = 32 rows: one)
    tile     one exact evaluation tile: n captions x m clips scored by the engine (``score_matrix``),
             encoders timed per item; Clotho's evaluation (5,225 x 1,045) projected from both
    cascade  the cascade + heads + loss alone on encoder features (what checkpointing changes) at B = 32

The load average (1 min) is printed before and after: the machine may be shared (absolute times
then inflate; rows next to each other are comparable).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CLOTHO = (5225, 1045)  # evaluation captions x clips
KINDS = ("single", "stacking", "iterating")


def peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class _Features(torch.nn.Module):  # the towers' place when the cascade is benchmarked alone
    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim


def build(row: dict, standins: Path):
    """The full-size ``CoAttnModel`` of ``row`` (``towers: false``: feature stand-ins instead of towers)."""
    from coattn.coattention import CoAttentionCascade
    from coattn.model import CoAttnModel

    torch.manual_seed(0)
    kind = row["kind"]
    cascade = CoAttentionCascade(kind, depth=1 if kind == "single" else 5, width=512, heads=8, ffn_dim=2048,
                                 dropout=0.1, pooling="attention", checkpointing=row.get("checkpointing", False))
    if not row.get("towers", True):
        return CoAttnModel(_Features(768), _Features(768), cascade, embed_dim=512)
    from coattn.encoders import ClapAudioEncoder, HFTextEncoder
    audio = ClapAudioEncoder("HTSAT-tiny", checkpoint=str(standins / "630k-audioset-best.pt"))
    text = HFTextEncoder(model=str(standins / "roberta-base"), max_length=32)
    return CoAttnModel(audio, text, cascade, embed_dim=512)


def captions(n: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    from standins import clotho_captions
    return clotho_captions()[:n]


def random_features(n: int, length: int, seed: int):
    from coattn.features import SequenceFeatures
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, length, 768, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[n // 2:, length * 3 // 4:] = False  # some padding, as real captions have
    return SequenceFeatures(s, mask, s.mean(1))


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def compile_cascade(model) -> None:
    """torch.compile each cascade layer's unit of work (what ``checkpointing`` wraps), in place."""
    import coattn.coattention as ca
    for layer in (*model.cascade.text_layers, *model.cascade.audio_layers):
        layer.compile()
    ca._audio_layer = torch.compile(ca._audio_layer)


def run_step(row: dict, standins: Path) -> dict:
    from coattn.loss import RetrievalLoss

    model = build(row, standins).train()
    if row.get("compile"):
        compile_cascade(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    b, loss_fn = row["batch"], RetrievalLoss(aux_weight=0.5)
    ids = torch.arange(b)
    if row.get("towers", True):
        wave, texts = 0.1 * torch.randn(b, 480000), captions(b)
    base, times = rss_gb(), []
    for _ in range(row.get("steps", 2)):
        t = time.perf_counter()
        with autocast(row["precision"]):
            if row.get("towers", True):
                audio, text = model.encode_audio(wave), model.encode_text(texts)
            else:
                audio, text = random_features(b, 32, 1), random_features(b, 32, 2)
            loss = loss_fn(model, audio, text, ids, ids)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    assert torch.isfinite(loss)
    return {"seconds": times[-1], "first_seconds": times[0], "peak_gb": peak_rss_gb(),
            "step_peak_gb": peak_rss_gb() - base, "loss": float(loss),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def run_tile(row: dict, standins: Path) -> dict:
    from coattn.retrieval.tiling import score_matrix

    model = build(row, standins).eval()
    n, m = row["captions"], row["clips"]
    with torch.no_grad(), autocast(row["precision"]):
        t = time.perf_counter()
        audio = model.encode_audio(0.1 * torch.randn(m, 480000))
        t_audio = (time.perf_counter() - t) / m
        t = time.perf_counter()
        text = model.encode_text(captions(n))
        t_text = (time.perf_counter() - t) / n
    audio, text = audio.to("cpu", torch.float32), text.to("cpu", torch.float32)
    base = rss_gb()
    with torch.no_grad():
        t = time.perf_counter()
        s = score_matrix(model, model.prepare_text(text), model.prepare_audio(audio), tile_pairs=n * m,
                         precision=row["precision"], progress=False)
        t_tile = time.perf_counter() - t
    assert s.shape == (n, m) and torch.isfinite(s).all()
    per_pair = t_tile / (n * m)
    encoders = CLOTHO[1] * t_audio + CLOTHO[0] * t_text
    rerank_passes = 64 * sum(CLOTHO)  # K (N + M): the most a K = 64 shortlist union can hold
    return {"seconds": t_tile, "per_pair_ms": 1e3 * per_pair, "audio_ms": 1e3 * t_audio, "text_ms": 1e3 * t_text,
            "exact_h": (CLOTHO[0] * CLOTHO[1] * per_pair + encoders) / 3600,
            "rerank_h": (rerank_passes * per_pair + encoders) / 3600, "encoders_min": encoders / 60,
            "peak_gb": peak_rss_gb(), "step_peak_gb": peak_rss_gb() - base}


def child(row: dict, standins: Path) -> None:
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    out = run_tile(row, standins) if row["what"] == "tile" else run_step(row, standins)
    print("ROW " + json.dumps({**row, **out}), flush=True)


def measure(row: dict, standins: Path, timeout: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--standins", str(standins), "--row", json.dumps(row)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "BENCH_THREADS": str(threads),
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"over {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return {**row, "error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:160]}


def rows(args) -> list[dict]:
    out = []
    kinds = ("iterating",) if args.quick else KINDS
    for kind in kinds:
        out.append({"what": "step", "kind": kind, "batch": 4, "precision": "fp32"})
    out.append({"what": "step", "kind": "iterating", "batch": 4, "precision": "bf16"})
    if args.batch8:
        out += [{"what": "step", "kind": "iterating", "batch": 8, "precision": p} for p in ("fp32", "bf16")]
    for kind in kinds:
        out.append({"what": "tile", "kind": kind, "captions": 8, "clips": 32, "precision": "fp32"})
    out.append({"what": "tile", "kind": "iterating", "captions": 8, "clips": 32, "precision": "bf16"})
    for precision in ("fp32",) if args.quick else ("fp32", "bf16"):  # the levers at B = 32, cascade alone:
        for ckpt in (False, True):  # one step each (1,024 pairs; AdamW's state is 0.3 GB of it)
            out.append({"what": "step", "kind": "iterating", "batch": 32, "precision": precision,
                        "checkpointing": ckpt, "towers": False, "steps": 1})
    if args.compile:  # eager vs compiled, cascade alone; the first step compiles, the third is timed
        for compiled in (False, True):
            out.append({"what": "step", "kind": "iterating", "batch": 8, "precision": "fp32", "towers": False,
                        "compile": compiled, "steps": 3})
    if args.batch32:  # the full model, bf16: ~11 GB without checkpointing (fp32 would need ~21 GB)
        out += [{"what": "step", "kind": "iterating", "batch": 32, "precision": "bf16", "checkpointing": c, "steps": 1}
                for c in (False, True)]
    return out


def describe(r: dict) -> str:
    parts = [r["kind"], f"B={r['batch']}" if "batch" in r else f"{r['captions']}x{r['clips']}", r["precision"]]
    parts += [x for x, on in (("ckpt", r.get("checkpointing")), ("compile", r.get("compile")),
                              ("cascade only", r.get("towers") is False)) if on]
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--standins", type=Path, default=Path("runs/standins"), help="where the stand-in files live")
    ap.add_argument("--quick", action="store_true", help="iterating only, levers in fp32 only")
    ap.add_argument("--batch8", action="store_true", help="add the full model at B = 8 (fp32, bf16)")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (compiles for minutes)")
    ap.add_argument("--batch32", action="store_true", help="add the full model at B = 32 (bf16, checkpointing off "
                    "and on; needs ~12 GB free)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row. 1 by default: on a shared "
                    "2-core machine (load 6) 2 threads spin-wait; a cascade step took 13.2 s with 2, 4.3 s with 1")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.row:
        child(json.loads(args.row), args.standins)
        return 0
    sys.path.insert(0, str(HERE))
    from standins import build as build_standins
    build_standins(args.standins)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s) per row", flush=True)
    results = []
    for row in rows(args):
        r = measure(row, args.standins, args.timeout, args.threads)
        results.append(r)
        if "error" in r:
            print(f"{describe(r)}: {r['error']}", flush=True)
        elif r["what"] == "step":
            print(f"step  {describe(r)}: {r['seconds']:.1f} s (first {r['first_seconds']:.1f} s), peak RSS "
                  f"{r['peak_gb']:.2f} GB, step peak {r['step_peak_gb']:.2f} GB, {r['params_m']:.1f} M params, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        else:
            print(f"tile  {describe(r)}: {r['seconds']:.1f} s = {r['per_pair_ms']:.1f} ms/pair; encoders "
                  f"{r['audio_ms']:.0f} ms/clip, {r['text_ms']:.0f} ms/caption; Clotho exact {r['exact_h']:.1f} h, "
                  f"rerank K=64 <= {r['rerank_h']:.2f} h (encoders {r['encoders_min']:.1f} min); peak RSS "
                  f"{r['peak_gb']:.2f} GB, load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| row | seconds | peak RSS GB | above start GB | Clotho exact h | rerank K=64 h |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['what']} {describe(r)} | {r['error']} | | | | |")
            continue
        proj = f"{r['exact_h']:.1f} | {r['rerank_h']:.2f}" if r["what"] == "tile" else " | "
        print(f"| {r['what']} {describe(r)} | {r['seconds']:.1f} | {r['peak_gb']:.2f} | {r['step_peak_gb']:.2f} | "
              f"{proj} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
