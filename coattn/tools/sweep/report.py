"""Sweep results: ``results.csv`` (one row per run), the summary over seeds, plots, ``report.md``.

The CSV is the only input of the report, so ``--report-only`` and docs/ablations/summarise.py
re-render from it without the runs' folders. A point's spread over seeds is what decides whether a
difference is real, so the table gives n, mean, std, min and max, and the plots show every seed as
a dot next to the mean +- std bar.
"""
from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path
from typing import Any

TEST_METRICS = ("t2a_mAP@10", "t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_mAP@10", "a2t_R@1", "a2t_R@10")


def flatten_params(params: dict[str, Any]) -> dict[str, Any]:
    """Dict-valued parameters (``--model={...}``) become one column per key: ``model.temperature``."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def write_csv(jobs: list, path: Path, metric: str) -> None:  # jobs: runner.Job (runner imports this module)
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in flatten_params(j.params) if k not in keys]
    tests = list(TEST_METRICS) + sorted({k for j in jobs for k in j.test} - set(TEST_METRICS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "point", "seed", *keys, "status", "seconds", f"{metric} (best)", f"{metric} (last)",
                    *[f"test/{m}" for m in tests], "error"])
        for j in jobs:
            p = flatten_params(j.params)
            w.writerow([j.name, j.point, "" if j.seed is None else j.seed, *[p.get(k, "") for k in keys], j.status,
                        f"{j.seconds:.1f}", j.val.get("best", ""), j.val.get("last", ""),
                        *[j.test.get(m, "") for m in tests], j.error])


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(s: Any) -> Any:
    if isinstance(s, str):
        for cast in (int, float):
            try:
                return cast(s)
            except ValueError:
                pass
        if s in ("True", "False"):
            return s == "True"
    return s


def summarise(rows: list[dict[str, Any]], metric: str = "test/t2a_mAP@10") -> tuple[list[str], list[dict]]:
    """Group rows by their parameters (all columns between ``seed`` and ``status``) over seeds."""
    if not rows:
        return [], []
    cols = list(rows[0].keys())
    params = cols[cols.index("seed") + 1: cols.index("status")]
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["status"] != "done" or r.get(metric, "") == "":
            continue
        groups.setdefault(tuple(r[p] for p in params), []).append(float(r[metric]))
    out = []
    for key, vals in groups.items():
        out.append({**{p: _num(v) for p, v in zip(params, key)}, "n": len(vals), "mean": statistics.fmean(vals),
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "min": min(vals), "max": max(vals),
                    "values": vals})
    return params, out


def _short(p: str) -> str:
    return p.rsplit(".", 1)[-1]


def choose_x(params: list[str], groups: list[dict], x: str | None = None) -> str | None:
    if x:
        match = [p for p in params if p == x or _short(p) == x]
        if not match:
            raise ValueError(f"--x {x!r} is not a swept parameter ({params})")
        return match[0]
    numeric = [p for p in params if all(isinstance(g[p], (int, float)) and not isinstance(g[p], bool) for g in groups)]
    pool = numeric or params
    return max(pool, key=lambda p: len({g[p] for g in groups}), default=None)


def plot(params: list[str], groups: list[dict], x: str, path: Path, metric: str, title: str,
         order: list[str] | None = None) -> Path:
    """``metric`` against ``x`` (numeric: a line per value of the other varying parameters;
    categorical: points in ``order``, default sorted), seeds as dots, mean +- std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [p for p in params if p != x and len({g[p] for g in groups}) > 1]
    series: dict[tuple, list[dict]] = {}
    for g in groups:
        series.setdefault(tuple(g[p] for p in others), []).append(g)
    numeric = all(isinstance(g[x], (int, float)) and not isinstance(g[x], bool) for g in groups)
    present = {str(g[x]) for g in groups}
    cats = None if numeric else [c for c in (order or []) if c in present] + sorted(present - set(order or []))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (key, gs) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
        gs = sorted(gs, key=lambda g: g[x] if numeric else str(g[x]))
        xs = [g[x] if numeric else cats.index(str(g[x])) for g in gs]
        offset = 0.0 if numeric else (i - (len(series) - 1) / 2) * 0.08  # categorical series side by side
        label = ", ".join(f"{_short(p)}={v}" for p, v in zip(others, key)) or "mean +- std"
        bars = ax.errorbar([v + offset for v in xs], [g["mean"] for g in gs], yerr=[g["std"] for g in gs],
                           marker="o", capsize=3, label=label, linestyle="-" if numeric and len(gs) > 1 else "none")
        color = bars[0].get_color()
        for xv, g in zip(xs, gs):
            ax.scatter([xv + offset] * len(g["values"]), g["values"], s=10, alpha=0.45, color=color)
    if numeric:
        vals = sorted({g[x] for g in groups})
        if vals and vals[0] > 0 and vals[-1] / vals[0] >= 10:  # a decade or more (temperature): log axis
            ax.set_xscale("log")
        ax.set_xticks(vals)
        ax.set_xticklabels([f"{v:g}" for v in vals])
    else:
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(_short(x))
    ax.set_ylabel(f"{metric}\n(mean +- std over seeds; dots: seeds)", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, title: str | None = None, x: str | None = None, command: str | None = None,
           metrics: tuple[str, ...] = ("test/t2a_mAP@10", "test/t2a_R@1", "test/t2a_R@10")) -> Path:
    """``<out>/report.md`` and ``<out>/<metric>.png`` from ``<out>/results.csv``."""
    rows = read_csv(out / "results.csv")
    title = title or out.name
    lines = [f"# Sweep report: {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    failed = [r for r in rows if r["status"] != "done"]
    lines += [f"{len(rows) - len(failed)} runs done, {len(failed)} failed"
              + (": " + ", ".join(r["run"] for r in failed) if failed else "") + ".", ""]
    for metric in metrics:
        params, groups = summarise(rows, metric)
        if not groups:
            continue
        xp = choose_x(params, groups, x)
        varying = [p for p in params if len({g[p] for g in groups}) > 1] or params
        # numbers sort by value (zero-padded), not as text: depth 10 after 9
        groups.sort(key=lambda g: tuple(str(g[p]) if not isinstance(g[p], (int, float)) else f"{g[p]:012.5f}"
                                        for p in varying))
        best = max(groups, key=lambda g: g["mean"])
        lines += [f"## {metric}", "", "| " + " | ".join(_short(p) for p in varying) + " | n | mean | std | min | max |",
                  "|" + "---|" * len(varying) + "---:|---:|---:|---:|---:|"]
        for g in groups:
            mark = " **(best)**" if g is best else ""
            lines.append("| " + " | ".join(str(g[p]) for p in varying) +
                         f" | {g['n']} | {g['mean']:.4f}{mark} | {g['std']:.4f} | {g['min']:.4f} | {g['max']:.4f} |")
        png = out / (re.sub(r"[^A-Za-z0-9_@.-]+", "_", metric) + ".png")
        if xp is not None:
            plot(params, groups, xp, png, metric, f"{title}: {metric} vs {_short(xp)}")
            lines += ["", f"![{metric}]({png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
