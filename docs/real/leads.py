"""Tabulate the pretrained real-sound regime's runs (docs/real/run_leads.sh): one row per variant, mean +- std
over seeds, against the converged stage-1 dual encoder(s).

    python docs/real/leads.py runs/real_leads --dual runs/real_dual/results/test/metrics.json
    python docs/real/leads.py runs/real_leads --only more_scenes --dual runs/x4/dual*/results/test/metrics.json

Columns (test split, %): fused t2a mAP@10, the share of the dual's error it removes ((fused - dual) / (1 - dual),
target >= 0.5), the pair score alone, t2a mAP@10 of the twin queries and of the other queries (the system's own
score; seed k against the dual of seed k), the order and count probes of the pair branch (the dual's beside it in the dual row), lambda.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(path: Path) -> dict:
    m = json.loads(path.read_text(encoding="utf-8"))
    e, met = m.get("extra", {}), m.get("metrics", {})
    sub = e.get("subsets", {})
    own = sub.get("fused") or sub.get("dual") or {}
    probe = e.get("probe", {})
    branch = "pair" if "pair" in probe.get("order", {}) else "dual"
    return {"fused": met.get("t2a_mAP@10"), "pair": (e.get("pair_metrics") or {}).get("t2a_mAP@10"),
            "twin": own.get("twin", {}).get("t2a_mAP@10"), "other": own.get("other", {}).get("t2a_mAP@10"),
            "order": probe.get("order", {}).get(branch), "count": probe.get("count", {}).get(branch),
            "dual_order": probe.get("order", {}).get("dual"), "lambda": e.get("fusion_lambda"),
            "ci": (m.get("ci") or {}).get("t2a_mAP@10"),
            "fused_order": probe.get("order", {}).get("fused"), "fused_count": probe.get("count", {}).get("fused")}


def cell(values: list, pct: bool = True) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    scale = 100 if pct else 1
    mean = statistics.fmean(values) * scale
    fmt = "{:.1f}" if pct else "{:.2f}"
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} +- {fmt.format(statistics.stdev(values) * scale)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="folder of run_leads.sh (variant/seedK/results/test/metrics.json)")
    p.add_argument("--dual", nargs="+", default=[], help="metrics.json of the stage-1 dual encoder(s), one per seed "
                   "in seed order (seed k's stage 2 is compared with the k-th)")
    p.add_argument("--per-seed", metavar="VARIANT", help="also one row per seed of VARIANT against its own dual")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="only these variants (e.g. those trained on another "
                   "data root, against that root's duals)")
    a = p.parse_args(argv)
    unknown = sorted(set(a.only or ()) - {v.name for v in Path(a.root).iterdir() if v.is_dir()})
    if unknown:
        p.error(f"--only {' '.join(unknown)}: no such variant folder in {a.root}")
    duals = [load(Path(d)) for d in a.dual]
    dual_ref = statistics.fmean(d["fused"] for d in duals) if duals else None
    print("| system | seeds | fused t2a mAP@10 | error removed | pair alone | twin queries | other queries "
          "| order probe | count probe | lambda |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    if duals:
        print(f"| dual encoder (stage 1, converged) | {len(duals)} | {cell([d['fused'] for d in duals])} | 0 | - | "
              f"{cell([d['twin'] for d in duals])} | {cell([d['other'] for d in duals])} | "
              f"{cell([d['order'] for d in duals], False)} | {cell([d['count'] for d in duals], False)} | - |")
    for variant in sorted(Path(a.root).iterdir()):
        files = sorted(variant.glob("seed*/results/test/metrics.json"))
        if a.only and variant.name not in a.only:
            continue
        runs = [load(f) for f in files]
        if not runs:
            continue
        # seed k against the dual of seed k (the k-th --dual file; stage 2 of seed k starts from it), else the mean
        seeds = [int(f.parts[-4][len("seed"):]) for f in files]
        refs = [duals[k]["fused"] if k < len(duals) else dual_ref for k in seeds]
        removed = [(r["fused"] - ref) / (1 - ref) for r, ref in zip(runs, refs)] if dual_ref is not None else []
        lams = sorted({r["lambda"] for r in runs if r["lambda"] is not None})
        print(f"| {variant.name} | {len(runs)} | {cell([r['fused'] for r in runs])} | {cell(removed, False)} | "
              f"{cell([r['pair'] for r in runs])} | {cell([r['twin'] for r in runs])} | "
              f"{cell([r['other'] for r in runs])} | {cell([r['order'] for r in runs], False)} | "
              f"{cell([r['count'] for r in runs], False)} | {', '.join(f'{x:g}' for x in lams) or '-'} |")
    if a.per_seed:
        print("\n| seed | dual (stage 1) t2a mAP@10 [95 % CI] | co-attention fused [95 % CI] | error removed | twin queries "
              "dual -> fused | other queries dual -> fused | order probe pair / fused | count probe pair / fused |")
        print("|---|---|---|---:|---|---|---|---|")
        for f in sorted((Path(a.root) / a.per_seed).glob("seed*/results/test/metrics.json")):
            k, r = int(f.parts[-4][len("seed"):]), load(f)
            if k >= len(duals):
                continue
            d = duals[k]
            ci = lambda x: f"{100 * x['fused']:.1f} [{100 * x['ci'][0]:.1f}, {100 * x['ci'][1]:.1f}]" if x["ci"] else f"{100 * x['fused']:.1f}"  # noqa: E731
            print(f"| {k} | {ci(d)} | {ci(r)} | {(r['fused'] - d['fused']) / (1 - d['fused']):.2f} | "
                  f"{100 * d['twin']:.1f} -> {100 * r['twin']:.1f} | {100 * d['other']:.1f} -> {100 * r['other']:.1f} | "
                  f"{r['order']:.2f} / {r['fused_order']:.2f} | {r['count']:.2f} / {r['fused_count']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
