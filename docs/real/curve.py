"""The convergence curve of stage 1 (validation t2a mAP@10 per epoch, one line per seed, the early-stopping point
marked) from the CSV logs of docs/real/run_dual_seeds.sh; prints the table and writes a PNG.

    python docs/real/curve.py runs/real_dual runs/real_dual_s1 runs/real_dual_s2 --out docs/real/dual_curve.png
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


def curve(run: Path) -> list[tuple[int, float]]:
    """(epoch, val/t2a_mAP@10) of the newest CSV log of a run folder."""
    logs = sorted(run.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    points = {}
    for log in logs:  # a resumed run continues in a new version folder
        with open(log, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("val/t2a_mAP@10"):
                    points[int(row["epoch"])] = float(row["val/t2a_mAP@10"])
    return sorted(points.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    curves = {r.name: curve(r) for r in a.runs}
    for name, pts in curves.items():
        best = max(pts, key=lambda t: t[1])
        print(f"{name}: {len(pts)} epochs, best {100 * best[1]:.1f} at epoch {best[0]}; "
              + " ".join(f"{100 * v:.1f}" for _, v in pts))
    if a.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        for name, pts in curves.items():
            xs, ys = zip(*pts)
            ax.plot(xs, [100 * y for y in ys], marker=".", label=name)
            best = max(pts, key=lambda t: t[1])
            ax.plot([best[0]], [100 * best[1]], "k*")
        ax.set_xlabel("epoch"); ax.set_ylabel("val t2a mAP@10 (%)"); ax.grid(alpha=0.3)
        ax.set_title("stage 1: dual encoder, frozen pretrained towers (* = best)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.out, dpi=110)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
