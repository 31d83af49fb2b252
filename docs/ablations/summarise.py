"""Collect the ablation sweeps (runs/ablation/*/results.csv) into docs/ablations/: CSVs, plots, tables.

    python docs/ablations/summarise.py [runs/ablation]

Writes docs/ablations/{cascades,depth,temperature}.csv (the sweeps' results), the plots
cascades.png, depth.png, temperature.png and prints the markdown tables used in docs/ablations.md.
The cascade comparison joins `none` and `single` (cascades sweep) with stacking and iterating at
depth 2 (depth sweep: same base config and seeds).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from coattn.tools import sweep as sw

DOCS = Path(__file__).resolve().parent
ORDER = {"none": 0, "single": 1, "stacking": 2, "iterating": 3}
METRICS = ("test/t2a_mAP@10", "test/t2a_R@1", "test/t2a_R@10", "test/a2t_mAP@10")


def rows_of(path: Path) -> list[dict]:
    return sw.read_csv(path) if path.is_file() else []


def table(params: list[str], rows: list[dict], label: str) -> str:
    """One line per point: mean +- std over seeds (n) for each metric."""
    per_metric = {m: {tuple(str(g[p]) for p in params): g for g in sw.summarise(rows, m)[1]} for m in METRICS}
    keys = sorted(per_metric[METRICS[0]], key=lambda k: tuple((ORDER.get(v, 9), v) for v in k))
    head = "| " + " | ".join(sw._short(p) for p in params) + " | n | " + " | ".join(m[5:] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * len(params) + "---:|" + "---:|" * len(METRICS)]
    for k in keys:
        g0 = per_metric[METRICS[0]][k]
        cells = [f"{per_metric[m][k]['mean']:.3f} +- {per_metric[m][k]['std']:.3f}" if k in per_metric[m] else "-"
                 for m in METRICS]
        lines.append("| " + " | ".join(k) + f" | {g0['n']} | " + " | ".join(cells) + " |")
    return f"**{label}** (test split, mean +- std over seeds)\n\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    src = Path(argv[0] if argv else "runs/ablation")
    out = []
    cascades, depth, temp = (rows_of(src / n / "results.csv") for n in ("cascades", "depth", "temperature"))
    for name, rows in (("cascades", cascades), ("depth", depth), ("temperature", temp)):
        if rows:
            shutil.copyfile(src / name / "results.csv", DOCS / f"{name}.csv")
    kind, dep = "model.cascade.init_args.kind", "model.cascade.init_args.depth"
    if cascades or depth:
        joined = [r for r in cascades] + [r for r in depth if r[dep] == "2"]
        params, groups = sw.summarise([{k: r[k] for k in ("run", "point", "seed", kind, "status", *METRICS)}
                                       for r in joined], "test/t2a_mAP@10")
        sw.plot(params, groups, kind, DOCS / "cascades.png", "test/t2a_mAP@10", "cascades at depth 2 (single: 1 layer)",
                order=list(ORDER))
        out.append(table([kind], joined, "Cascades at equal depth (2; single is 1 layer by definition)"))
    if depth:
        params, groups = sw.summarise(depth, "test/t2a_mAP@10")
        sw.plot(params, groups, dep, DOCS / "depth.png", "test/t2a_mAP@10", "depth: stacking vs iterating")
        out.append(table([kind, dep], depth, "Depth"))
    if temp:
        params, groups = sw.summarise(temp, "test/t2a_mAP@10")
        sw.plot(params, groups, "model.temperature", DOCS / "temperature.png", "test/t2a_mAP@10",
                "NT-Xent temperature (iterating, depth 2)")
        out.append(table(["model.learn_temperature", "model.temperature"], temp, "Temperature"))
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
