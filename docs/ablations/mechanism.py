"""Tabulate the mechanism study (docs/ablations/run_mechanism.sh) and the 3-seed recipe runs.

    python docs/ablations/mechanism.py runs/mechanism [--dual runs/exp/dual_s0/results/test/metrics.json ...]
        [--ref "label" runs/.../metrics.json ...]

Reads ``<root>/<variant>/seed<k>/results/test/metrics.json`` (written by ``coattn test``) and prints
one markdown row per variant: fused t2a mAP@10, the pair score alone, the dual branch (all mean +- std
over seeds), lambda, the order and count probes of the pair branch (and the dual one's order
accuracy); writes ``mechanism.csv`` and ``mechanism.png`` next to this file. ``--dual`` adds reference
rows for dual-encoder runs (cascade none), ``--ref LABEL FILES`` any further labelled group.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def read(path: Path) -> dict:
    m = json.loads(path.read_text(encoding="utf-8"))
    e = m.get("extra", {})
    fused = m["metrics"]["t2a_mAP@10"]
    probe = e.get("probe", {})
    return {"fused": fused, "pair": (e.get("pair_metrics") or m["metrics"])["t2a_mAP@10"] if e.get("cascade") != "none"
            else None, "dual": e.get("dual_metrics", m["metrics"])["t2a_mAP@10"], "lambda": e.get("fusion_lambda"),
            "order_pair": probe.get("order", {}).get("pair"), "order_dual": probe.get("order", {}).get("dual"),
            "count_pair": probe.get("count", {}).get("pair")}


def stat(values: list) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{100 * v[0]:.1f}" if v[0] <= 1.5 else f"{v[0]:g}"
    return f"{100 * statistics.mean(v):.1f} +- {100 * statistics.stdev(v):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--dual", nargs="*", default=[], help="metrics.json of dual-encoder runs (reference rows)")
    p.add_argument("--ref", nargs="+", action="append", default=[], metavar=("LABEL", "METRICS"),
                   help="a further reference row: its label, then the metrics.json of its seeds (repeatable)")
    a = p.parse_args()
    groups: dict[str, list[dict]] = {}
    if a.dual:
        groups["dual encoder (stage 1)"] = [read(Path(x)) for x in a.dual]
    for label, *files in a.ref:
        groups[label] = [read(Path(x)) for x in files]
    for f in sorted(a.root.glob("*/seed*/results/test/metrics.json")):
        groups.setdefault(f.parents[3].name, []).append(read(f))
    keys = ("fused", "pair", "dual", "lambda", "order_pair", "order_dual", "count_pair")
    print("| variant | seeds | t2a mAP@10 (fused) | pair alone | dual branch | lambda | order probe pair | "
          "order probe dual | count probe pair |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, runs in groups.items():
        cells = [stat([r[k] for r in runs]) if k != "lambda" else
                 ",".join(sorted({f"{r[k]:g}" for r in runs if r[k] is not None})) or "-" for k in keys]
        for i in (4, 5, 6):  # probe accuracies as fractions
            vals = [r[keys[i]] for r in runs if r[keys[i]] is not None]
            cells[i] = "-" if not vals else f"{statistics.mean(vals):.2f}"
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        rows.append({"variant": name, "seeds": len(runs), **{k: statistics.mean([r[k] for r in runs]) if all(
            r[k] is not None for r in runs) else "" for k in keys}})
    with open(DOCS / "mechanism.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "seeds", *keys])
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    names = [r["variant"] for r in rows][::-1]
    for j, (k, label) in enumerate((("fused", "t2a mAP@10 (%)"), ("order_pair", "order probe, pair branch"))):
        vals = [rows[len(rows) - 1 - i][k] or 0 for i in range(len(rows))]
        scale = 100 if k == "fused" else 1
        ax[j].barh(names, [v * scale for v in vals], color="tab:blue" if j == 0 else "tab:orange")
        ax[j].set_xlabel(label)
    ax[1].axvline(0.5, color="grey", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(DOCS / "mechanism.png", dpi=110)


if __name__ == "__main__":
    main()
