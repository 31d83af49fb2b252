"""Print the pretrained-regime moment table from the runs of docs/moments/run_seeds.sh.

    python docs/moments/summarize.py runs/moments_seeds [--test data/moments_real/test.jsonl]

Reads OUT/{coattn,dual_head}/seed*/results/test/metrics.json (coattn test); rows: the co-attention head, the
dual-features head, and the zero-shot sliding-window dual encoder (each test's baseline row: the same frozen dual
heads in both runs of a seed, so both give it; the co-attention runs' copy is shown, and a mismatch is reported).
Figures in %, mean +- std (sample std) over seeds; ratios = row mean / zero-shot mean, and the smallest
per-seed ratio (each seed against its own zero-shot row). With ``--test`` (the split's JSONL), the moment
heads' R1@0.7 and mAP@0.5:0.95 are also given by ground-truth window length: within the tower's 10 s window
or longer (read from each run's predictions.jsonl).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95")
BASE = "baseline_dual_sliding/moment/"


def load(out: Path, variant: str) -> dict[str, dict]:
    runs = {}
    for f in sorted((out / variant).glob("seed*/results/test/metrics.json")):
        runs[f.parts[-4]] = json.loads(f.read_text())["metrics"]
    return runs


def stats(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, statistics.stdev(values) if len(values) > 1 else 0.0


def by_length(out: Path, variant: str, test: Path, cut: float = 10.0) -> dict[str, list[tuple[float, float, int]]]:
    """Per seed, (R1@0.7, mAP@0.5:0.95, queries) of the queries whose longest window is <= ``cut`` s / longer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from coattn.moments.metrics import moment_metrics

    gt = {}
    for line in test.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            gt[str(q["qid"])] = q["relevant_windows"]
    res: dict[str, list] = {f"<= {cut:g} s": [], f"> {cut:g} s": []}
    for f in sorted((out / variant).glob("seed*/results/test/predictions.jsonl")):
        preds = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        for name, long in zip(res, (False, True)):
            sel = [p for p in preds if (max(e - s for s, e in gt[str(p["qid"])]) > cut) == long]
            if sel:
                m = moment_metrics([p["pred_relevant_windows"] for p in sel], [gt[str(p["qid"])] for p in sel])
                res[name].append((m["moment/R1@0.7"], m["moment/mAP@0.5:0.95"], len(sel)))
    return res


def main(argv: list[str]) -> int:
    test = None
    if "--test" in argv:
        i = argv.index("--test")
        test, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    out = Path(argv[0] if argv else "runs/moments_seeds")
    co, du = load(out, "coattn"), load(out, "dual_head")
    if not co:
        print(f"no metrics.json under {out}/coattn/seed*/results/test/", file=sys.stderr)
        return 1
    rows = [("co-attention head", co, "moment/"), ("dual features + same head (FiLM)", du, "moment/"),
            ("zero-shot dual, sliding spans", co, BASE)]
    zero = {k: stats([m[BASE + k] for m in co.values()])[0] for k in KEYS}
    print(f"seeds: co-attention {sorted(co)}, dual features {sorted(du)}; figures in %, mean +- std\n")
    print("| system | " + " | ".join(KEYS) + " |")
    print("|---|" + "---:|" * len(KEYS))
    for name, runs, prefix in rows:
        if runs:
            cells = [stats([100 * m[prefix + k] for m in runs.values()]) for k in KEYS]
            print(f"| {name} | " + " | ".join(f"{a:.2f} +- {s:.2f}" for a, s in cells) + " |")
    print("\nratio vs the zero-shot dual (row mean / zero-shot mean):\n")
    print("| system | " + " | ".join(KEYS) + " |")
    print("|---|" + "---:|" * len(KEYS))
    for name, runs, prefix in rows[:2]:
        if runs:
            cells = [stats([m[prefix + k] for m in runs.values()])[0] / zero[k] if zero[k] else float("nan")
                     for k in KEYS]
            print(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    print("\nsmallest per-seed ratio (each seed against its own zero-shot row):\n")
    print("| system | " + " | ".join(KEYS) + " |")
    print("|---|" + "---:|" * len(KEYS))
    for name, runs, prefix in rows[:2]:
        if runs:
            cells = [min(m[prefix + k] / co[seed][BASE + k] if co.get(seed, {}).get(BASE + k) else float("nan")
                         for seed, m in runs.items()) for k in KEYS]
            print(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    if test is not None:
        print("\nby ground-truth window length (R1@0.7 / mAP@0.5:0.95, %, mean +- std over seeds):\n")
        print("| system | windows | queries | R1@0.7 | mAP@0.5:0.95 |\n|---|---|---:|---:|---:|")
        for name, variant in (("co-attention head", "coattn"), ("dual features + same head (FiLM)", "dual_head")):
            for bucket, vals in by_length(out, variant, test).items():
                if vals:
                    r, mp = stats([100 * v[0] for v in vals]), stats([100 * v[1] for v in vals])
                    print(f"| {name} | {bucket} | {vals[0][2]} | {r[0]:.1f} +- {r[1]:.1f} | {mp[0]:.1f} +- {mp[1]:.1f} |")
    for seed in sorted(set(co) & set(du)):  # the same frozen dual heads: the baseline rows must agree
        diff = max(abs(co[seed][BASE + k] - du[seed][BASE + k]) for k in KEYS)
        if diff > 1e-6:
            print(f"note: {seed}: the two runs' zero-shot rows differ by {diff:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
