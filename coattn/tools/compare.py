"""``coattn compare``: test results of several runs side by side, the first one as the reference.

    coattn compare runs/demo_dual/results/test/metrics.json runs/demo/results/test/metrics.json \\
        --names "dual encoder" "co-attention"

One row per ``metrics.json`` (written by ``coattn test``): t2a mAP@10 with its 95 % CI, R@1/5/10,
a2t mAP@10, the ratio of t2a mAP@10 to the first row's, the co-attention branch alone (its pair
score before fusion, and its ratio to the first row), the fusion lambda, the compositional probes
(order and count accuracy of the pair and dual branches) when the test split had them, and, when the
test split records order twins (``coattn synth --sounds``), t2a mAP@10 of the queries whose clip has a
twin (only *when* things happen tells the two apart) and of the other queries.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def read_metrics(path: str) -> dict:
    """A ``metrics.json`` of ``coattn test``, checked: a JSON object whose ``metrics`` map names to numbers
    (``t2a_mAP@10`` among them). Anything else is a one-line ``DataError`` naming the file."""
    from coattn.errors import DataError, DataNotFoundError

    hint = "not a metrics.json of `coattn test` (run `coattn test` again to rewrite it)"
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"{path}: not found (run `coattn test` first; it writes "
                                "<run>/results/test/metrics.json)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): {hint}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}; truncated?): {hint}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(m, dict) or not isinstance(m.get("metrics"), dict):
        found = f"a JSON {type(m).__name__}" if not isinstance(m, dict) else f"keys {sorted(m)[:6]}"
        raise DataError(f"{path}: holds {found}, no \"metrics\" object: {hint}")
    bad = {k: v for k, v in m["metrics"].items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        k, v = next(iter(bad.items()))
        raise DataError(f"{path}: metric {k!r} is {v!r}, not a finite number ({len(bad)} such): {hint}")
    if "t2a_mAP@10" not in m["metrics"]:
        raise DataError(f"{path}: no t2a_mAP@10 among its metrics {sorted(m['metrics'])[:6]}: {hint}")
    return m


def rows(paths: list[str], names: list[str] | None) -> list[dict]:
    out = []
    for i, p in enumerate(paths):
        m = read_metrics(p)
        metrics, ci, extra = m["metrics"], m.get("ci") or {}, m.get("extra") or {}
        name = names[i] if names and i < len(names) else Path(p).parents[2].name if len(Path(p).parents) > 2 else p
        out.append({"name": name, "metrics": metrics, "ci": ci.get("t2a_mAP@10"), "extra": extra})
    ref = out[0]["metrics"]["t2a_mAP@10"] if out else 1.0
    if ref <= 0:
        from coattn.errors import DataError

        raise DataError(f"{paths[0]}: the reference (first file) has t2a_mAP@10 = {ref}: the ratios would be "
                        "meaningless; put a run with a positive score first")
    return out


def _probe_cell(probe: dict) -> str:
    if "pair" in probe:
        return f"{probe['pair']:.2f} / {probe['dual']:.2f}"
    return f"- / {probe['dual']:.2f}" if "dual" in probe else "-"


def _subset_cells(extra: dict) -> str:
    """t2a mAP@10 of the twin and the other queries, for the run's own score (fused, else dual)."""
    subsets = extra.get("subsets") or {}
    own = subsets.get("fused") or subsets.get("dual") or {}
    return "".join(f" {_pct(own.get(g, {}).get('t2a_mAP@10'))} |" for g in ("twin", "other"))


def table(items: list[dict]) -> str:
    ref = items[0]["metrics"].get("t2a_mAP@10") or float("nan")
    head = ("| run | t2a mAP@10 | 95 % CI | R@1 | R@5 | R@10 | a2t mAP@10 | x first | pair alone | x first | lambda "
            "| order probe pair / dual | count probe pair / dual |")
    sep = "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    if any(it["extra"].get("subsets") for it in items):  # the test split records order twins
        head += " twin queries | other queries |"
        sep += "---:|---:|"
    lines = [head, sep]
    for it in items:
        m, e = it["metrics"], it["extra"]
        ci = f"[{_pct(it['ci'][0])}, {_pct(it['ci'][1])}]" if it["ci"] else "-"
        order, count = (_probe_cell(e.get("probe", {}).get(kind, {})) for kind in ("order", "count"))
        lam = e.get("fusion_lambda")
        pair = (e.get("pair_metrics") or (m if e.get("cascade", "none") != "none" else {})).get("t2a_mAP@10")
        pair_ratio = "-" if pair is None else f"{pair / ref:.2f}"
        lines.append(f"| {it['name']} | {_pct(m.get('t2a_mAP@10'))} | {ci} | {_pct(m.get('t2a_R@1'))} | "
                     f"{_pct(m.get('t2a_R@5'))} | {_pct(m.get('t2a_R@10'))} | {_pct(m.get('a2t_mAP@10'))} | "
                     f"{m.get('t2a_mAP@10', float('nan')) / ref:.2f} | {_pct(pair)} | {pair_ratio} | "
                     f"{'-' if lam is None else f'{lam:g}'} | {order} | {count} |"
                     + (_subset_cells(e) if "twin queries" in head else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.json files of `coattn test`")
    p.add_argument("--names", nargs="+", help="a name per file (default: the run folder's name)")
    a = p.parse_args(argv)
    print(table(rows(a.metrics, a.names)))  # every file is read and checked before anything is printed
    return 0


if __name__ == "__main__":
    sys.exit(main())
