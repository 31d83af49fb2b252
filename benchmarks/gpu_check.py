"""GPU check (issue 12, part 4): the paper's configuration at its real size on one GPU, one table.

    bash benchmarks/gpu_check.sh              # one H100/H200: under 5 minutes
    bash benchmarks/gpu_check.sh --dry-run    # tiny sizes on CPU, seconds (tests/test_gpu_check.py runs it)

Model: built from the library's own classes with random weights (no download): ``ClapAudioEncoder``
HTS-AT tiny (31 M, 32 frames x 768 per 10 s clip), a RoBERTa-base-sized ``TinyTextEncoder`` (12
layers, 768 wide, 50,265-token embedding table; its BPE tokenizer is fitted on the script's
captions), the iterating cascade of experiments/clotho_iterating.yaml (width 512, 8 heads, depth 5,
FFN 2048, attention pooling), embed 512. Rows of the table:

    exact ranking     Clotho's evaluation size, 5,225 captions x 1,045 clips, on random encoder outputs
                      of the real shapes (what the feature cache hands the scorer; caption lengths
                      8-32 tokens), ``Retriever(mode="exact", precision="bf16")``: target <= 60 s
    rerank K=64       the same set, two-stage (``mode="rerank"``)
    bf16 vs fp32      the exact scores of the first ``agree_captions`` captions x every clip in both
                      precisions: max abs difference, Spearman rank correlation, same top-1 clip
    SDPA backend      the attention kernels that ran (aten op names) in scoring and
                      in a training step (the warm-up step; aten ops seen by a dispatch mode):
                      flash / efficient (memory-efficient) / cudnn / math
    training step     waveforms + captions -> both towers -> ``RetrievalLoss`` -> backward -> AdamW, bf16
                      autocast (fp32 loss, as Lightning's bf16-mixed): B x B pairs (``pair_negatives:
                      local``) at B = 32, and ``pair_negatives: hard`` (pair_k 8 + pair_random 8) at B =
                      32 / 128 / 512; samples/s, cascade pairs/s, peak memory; an out-of-memory is a row
    load average      before and after

On CPU (``--dry-run``) the same code runs at tiny sizes (HTSAT-mini, a 1-layer text tower, 13 x 7);
bf16 there is CPU autocast, and the library's scorer runs fp32 on CPU, so the agreement row compares
a CPU-autocast bf16 pass with fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from dataclasses import dataclass, field

import torch

from loadavg import LoadAverage

WORDS = ("a dog barks while rain falls on a tin roof and cars pass by the birds chirp loudly in the "
         "distance someone walks on gravel then a door slams shut water runs from a tap people talk "
         "quietly wind blows through trees an engine idles before driving away").split()


@dataclass
class Sizes:
    audio: str  # ClapAudioEncoder preset
    text: dict  # TinyTextEncoder arguments
    cascade: dict  # CoAttentionCascade arguments
    n_captions: int
    n_clips: int
    agree_captions: int
    rerank_k: int
    train: list = field(default_factory=list)  # (pair_negatives, B)
    steps: int = 3  # timed training steps (after one warm-up step)


FULL = Sizes("HTSAT-tiny", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                                vocab_size=50265, max_length=32),
             dict(kind="iterating", depth=5, width=512, heads=8, ffn_dim=2048, dropout=0.1, pooling="attention"),
             5225, 1045, 256, 64, [("local", 32), ("hard", 32), ("hard", 128), ("hard", 512)])
DRY = Sizes("HTSAT-mini", dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=500,
                               max_length=16),
            dict(kind="iterating", depth=2, width=32, heads=4, ffn_dim=64, dropout=0.1, pooling="attention"),
            13, 7, 13, 4, [("local", 2), ("hard", 2), ("hard", 4)], steps=1)


def captions(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 21, (n,), generator=g).tolist()  # Clotho captions: 8-20 words
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=g).tolist()) for k in lengths]


def build(sizes: Sizes, device: torch.device):
    from coattn.coattention import CoAttentionCascade
    from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
    from coattn.model import CoAttnModel

    torch.manual_seed(0)
    audio = ClapAudioEncoder(sizes.audio, checkpoint=None, freeze=False)
    text = TinyTextEncoder(**sizes.text)
    text.fit_tokenizer(captions(2000, seed=1))
    model = CoAttnModel(audio, text, CoAttentionCascade(**sizes.cascade), embed_dim=512)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB (max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (process peak RSS)"


def bf16(device: torch.device):
    """bf16 autocast around the library's scorer where it does not cast itself (CPU: it runs fp32)."""
    if device.type == "cuda":
        return contextlib.nullcontext()  # precision="bf16" autocasts inside the scorer
    return torch.autocast("cpu", dtype=torch.bfloat16)


def eval_features(model, sizes: Sizes, device: torch.device):
    """Random encoder outputs of the real shapes: clips (M, frames, Da), captions (N, max_length, Dt)."""
    from coattn.features import SequenceFeatures

    g = torch.Generator(device=device).manual_seed(2)
    enc_a, enc_t = model.audio_encoder, model.text_encoder
    a = torch.randn(sizes.n_clips, enc_a.num_frames, enc_a.out_dim, device=device, generator=g)
    t = torch.randn(sizes.n_captions, enc_t.max_length, enc_t.out_dim, device=device, generator=g)
    lengths = torch.randint(8, enc_t.max_length + 1, (sizes.n_captions,), device=device, generator=g)
    t_mask = torch.arange(enc_t.max_length, device=device)[None] < lengths[:, None]
    a_mask = torch.ones(a.shape[:2], dtype=torch.bool, device=device)
    return SequenceFeatures(a, a_mask, a.mean(1)), SequenceFeatures(t, t_mask, t.mean(1))


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def sdpa_backends(fn) -> str:
    """Which ``scaled_dot_product_attention`` kernels ``fn`` ran: the aten ops SDPA dispatched to (a
    dispatch mode sees the fused kernels; the math path is a composite that decomposes into matmuls
    and softmax before reaching it, so calls with no fused kernel seen ran math)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Kernels(TorchDispatchMode):
        names: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in func.__name__:
                self.names.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    class Calls(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.scaled_dot_product_attention:
                Calls.n += 1
            return func(*args, **(kwargs or {}))

    Kernels.names = set()
    with Calls(), Kernels():
        fn()
    kinds = {"flash": "flash", "efficient": "memory-efficient", "cudnn": "cudnn", "math": "math"}
    found = sorted({v for k, v in kinds.items() if any(k in n for n in Kernels.names)})
    if not found and Calls.n:
        return f"math ({Calls.n} SDPA calls, no fused kernel: the composite math path)"
    return (", ".join(found) or "no SDPA call") + f" ({Calls.n} SDPA calls; {', '.join(sorted(Kernels.names))})"


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = torch.empty_like(x).scatter_(0, x.argsort(), torch.arange(len(x), dtype=x.dtype, device=x.device))
    ry = torch.empty_like(y).scatter_(0, y.argsort(), torch.arange(len(y), dtype=y.dtype, device=y.device))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def check_scoring(model, sizes: Sizes, device: torch.device, rows: list) -> None:
    from coattn.retrieval import Retriever

    model.eval()
    audio, text = eval_features(model, sizes, device)
    n, m = sizes.n_captions, sizes.n_clips
    exact = Retriever(mode="exact", tile_pairs=16384, precision="bf16", fusion=0.0)
    small_a, small_t = audio.index(slice(0, min(m, 64))), text.index(slice(0, 4))
    with bf16(device):
        exact(model, small_a, small_t, progress=False)  # warm-up: kernels, allocator
        backend = sdpa_backends(lambda: exact(model, small_a, small_t, progress=False))
        reset_peak(device)
        sec, _ = timed(lambda: exact(model, audio, text, progress=False), device)
    rows.append(("exact ranking, bf16", f"{n:,} x {m:,} = {n * m:,} pairs, tile 16,384",
                 f"{sec:.1f} s ({n * m / sec:,.0f} pairs/s; target <= 60 s: {'met' if sec <= 60 else 'NOT met'}); "
                 f"peak {peak_memory(device)}"))
    rerank = Retriever(mode="rerank", rerank_k=sizes.rerank_k, tile_pairs=16384, precision="bf16", fusion=0.0)
    with bf16(device):
        sec, res = timed(lambda: rerank(model, audio, text, progress=False), device)
    rows.append((f"rerank K={sizes.rerank_k}, bf16", f"{n:,} x {m:,}, {res.info['cascade_passes']:,} cascade passes "
                 f"({100 * res.info['cascade_cost_fraction']:.1f} % of exact)", f"{sec:.1f} s"))
    k = min(n, sizes.agree_captions)
    sub = text.index(slice(0, k))
    with bf16(device):
        low = exact(model, audio, sub, progress=False).pair
    fp32 = Retriever(mode="exact", tile_pairs=16384, precision="fp32", fusion=0.0)
    full = fp32(model, audio, sub, progress=False).pair
    top1 = float((low.argmax(1) == full.argmax(1)).float().mean())
    rho = spearman(low.flatten(), full.flatten())
    rows.append(("bf16 vs fp32 scores", f"{k:,} captions x {m:,} clips",
                 f"max abs diff {(low - full).abs().max().item():.4f}; Spearman {rho:.5f}; "
                 f"same top-1 clip {100 * top1:.1f} %"))
    rows.append(("SDPA backend, scoring", "cascade attention (boolean key mask)", backend))


def check_training(model, sizes: Sizes, device: torch.device, rows: list) -> None:
    from coattn.loss import RetrievalLoss

    model.train()
    opt = torch.optim.AdamW([{"params": [p for n_, p in model.named_parameters() if "_encoder." in n_], "lr": 1e-5},
                             {"params": [p for n_, p in model.named_parameters() if "_encoder." not in n_]}],
                            lr=1e-4, weight_decay=0.01)
    n_params = sum(p.numel() for p in model.parameters())
    clip_samples = model.audio_encoder.clip_samples
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    backend = None
    for mode, b in sizes.train:
        loss_fn = RetrievalLoss(pair_negatives=mode, pair_k=8, pair_random=8)
        wave = torch.randn(b, clip_samples, device=device) * 0.1
        caps, ids = captions(b, seed=b), torch.arange(b, device=device)

        def step():
            with amp:
                out = loss_fn(model, model.encode_audio(wave), model.encode_text(caps), ids, ids, caps)
            out["loss"].float().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out["loss"]

        # hard: each caption x (its clip, K hard, R random) and each clip x as many captions (coattn/negatives.py)
        hard_cols = 1 + min(loss_fn.pair_k, b - 1) + min(loss_fn.pair_random, b - 1)
        pairs = b * b if mode == "local" else 2 * b * hard_cols
        name = f"training step, {'B x B' if mode == 'local' else 'hard negatives'}, B={b}"
        try:
            reset_peak(device)
            if backend is None:
                backend = sdpa_backends(step)  # the warm-up step, profiled
            else:
                step()
            sec = min(timed(step, device)[0] for _ in range(sizes.steps))
        except torch.cuda.OutOfMemoryError as exc:
            opt.zero_grad(set_to_none=True)
            rows.append((name, f"{pairs:,} cascade pairs per step", f"out of memory ({str(exc).splitlines()[0][:80]})"))
            continue
        rows.append((name, f"{pairs:,} cascade pairs per step, {'bf16' if device.type == 'cuda' else 'fp32'}",
                     f"{sec:.3f} s: {b / sec:,.1f} samples/s, {pairs / sec:,.0f} pairs/s; peak {peak_memory(device)}"))
    rows.append(("SDPA backend, training", "cascade + RoBERTa attention (dropout 0.1)", backend or "-"))
    rows.insert(0, ("model", f"{sizes.audio} + {sizes.text['num_layers']}-layer {sizes.text['hidden_size']}-wide "
                    f"text tower + {sizes.cascade['kind']} cascade width {sizes.cascade['width']} depth "
                    f"{sizes.cascade['depth']}", f"{n_params / 1e6:.1f} M parameters, random init"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (seconds): checks the script itself")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run `bash benchmarks/gpu_check.sh --dry-run` to check the script on CPU.")
        return 2
    sizes = DRY if args.dry_run else FULL
    t0 = time.perf_counter()
    with LoadAverage(quiet=True) as load:
        model = build(sizes, device)
        rows: list[tuple[str, str, str]] = []
        check_scoring(model, sizes, device, rows)
        check_training(model, sizes, device, rows)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# coattn GPU check{' (DRY RUN: tiny sizes)' if args.dry_run else ''}: {where}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t0:.0f} s in all")
    print("| check | setting | result |\n|---|---|---|")
    for row in [("load average before", "1 / 5 / 15 min", load.before), *rows,
                ("load average after", "1 / 5 / 15 min", load.after)]:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
