"""``coattn sweep``: run a W&B sweep file locally, without a W&B server, and report the ablation.

    coattn sweep experiments/sweeps/depth.yaml --config experiments/demo.yaml --seeds 0 1 2
    coattn sweep experiments/sweeps/temperature.yaml --max-runs 3 --parallel 2 --out runs/sweeps/temp
    coattn sweep experiments/sweeps/depth.yaml --dry-run           # the commands, as the agent renders them
    coattn sweep experiments/sweeps/depth.yaml --report-only --out runs/sweeps/depth

``wandb sweep`` / ``wandb agent`` need the W&B server; this runs the same file offline:

1. W&B's own search engine (the ``sweeps`` package, ``sweeps.next_runs``) picks each next point
   (grid, random or bayes behave as with the server; bayes is fed the sweep ``metric``, here the
   best validation value of the run, averaged over seeds).
2. Each point's command is rendered exactly as the agent renders it (``${env}`` -> /usr/bin/env,
   ``${args}`` -> ``--key=value`` with Python's ``str`` of the value), with ``--config BASE``
   replacing the sweep's base config and ``--seed_everything=S`` appended per seed.
3. ``coattn fit``, then ``coattn test`` on the run's best checkpoint, as subprocesses (``--parallel``
   at once), each with ``COATTN_RUN_DIR=<out>/runs/<run>`` so its checkpoints, logs and results
   land in its own folder (coattn/runs.py relocates every path under ``default_root_dir``).
   ``--in-process`` runs them inside this process instead (no interpreter start-up per run: for
   tiny runs on few cores); the results are the same.
4. ``<out>/results.csv`` (one row per run: parameters, seed, status, val and test metrics),
   ``<out>/report.md`` (mean, standard deviation, min and max over seeds per point) and
   ``<out>/<metric>.png`` plots of the metric against the swept parameter, one line per value of
   the other parameters, seeds as dots, mean +- std as error bars.

Runs that already finished (``<run dir>/results/test/metrics.json`` exists) are reused, so an
interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess  # noqa: F401  (tests fake sw.subprocess.run; runner.py looks it up at each call)
import sys
import time
from pathlib import Path

from coattn.tools.sweep.grid import (DEFAULT_COMMAND, agent_flags, grid_points, load_sweep, metric_name,
                                     parse_command, parse_commands, render_command, replace_config)
# _short: docs/ablations/summarise.py labels its tables with it
from coattn.tools.sweep.report import (TEST_METRICS, _short, choose_x, flatten_params, plot, read_csv, report,
                                       summarise, write_csv)
from coattn.tools.sweep.runner import Job, execute, find_checkpoint, read_test, read_val, run_sweep, test_command

__all__ = [
    "DEFAULT_COMMAND",
    "Job",
    "TEST_METRICS",
    "agent_flags",
    "choose_x",
    "execute",
    "find_checkpoint",
    "flatten_params",
    "grid_points",
    "load_sweep",
    "main",
    "metric_name",
    "parse_command",
    "parse_commands",
    "plot",
    "read_csv",
    "read_test",
    "read_val",
    "render_command",
    "replace_config",
    "report",
    "run_sweep",
    "summarise",
    "test_command",
    "write_csv",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coattn sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="W&B sweep file (method, metric, parameters, command)")
    ap.add_argument("--config", dest="base", help="base config replacing the sweep command's --config FILE")
    ap.add_argument("--max-runs", type=int, help="points to run (default: the sweep's run_cap, else the whole grid)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (subprocesses)")
    ap.add_argument("--seeds", type=int, nargs="+", help="run every point once per seed (--seed_everything)")
    ap.add_argument("--out", help="output folder (default runs/sweeps/<sweep file name>)")
    ap.add_argument("--in-process", action="store_true", help="run fit/test inside this process, one at a time")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="arguments appended to every fit/test command (after ${args}); must come last")
    ap.add_argument("--x", help="parameter on the plots' x axis (default: the numeric one with most values)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the grid and exit")
    ap.add_argument("--report-only", action="store_true", help="re-render the report from <out>/results.csv")
    a = ap.parse_args(argv)

    sweep = load_sweep(a.sweep)
    out = Path(a.out or Path("runs") / "sweeps" / Path(a.sweep).stem)
    if a.dry_run:
        points = grid_points(sweep) if sweep["method"] == "grid" else []
        if sweep["method"] != "grid":
            print(f"# {sweep['method']} sweep: points are drawn as the sweep runs")
        for p in points[: a.max_runs] if a.max_runs else points:
            print(" ".join(replace_config(render_command(sweep.get("command", DEFAULT_COMMAND), p), a.base)
                           + a.extra))
        return 0
    if not a.report_only:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a.sweep, out / "sweep.yaml")
        t0 = time.time()
        jobs = run_sweep(sweep, out, base=a.base, seeds=a.seeds, max_runs=a.max_runs, parallel=a.parallel,
                         in_process=a.in_process, extra=a.extra)
        failed = [j for j in jobs if j.status != "done"]
        print(f"[sweep] {len(jobs) - len(failed)}/{len(jobs)} runs done in {time.time() - t0:.0f} s; "
              f"results in {out / 'results.csv'}")
    if not (out / "results.csv").is_file():
        print(f"no results in {out}", file=sys.stderr)
        return 1
    cmd = " ".join(["coattn", "sweep", a.sweep] + (["--config", a.base] if a.base else []) +
                   (["--seeds", *map(str, a.seeds)] if a.seeds else []) + (["--out", str(out)]))
    path = report(out, title=a.title or Path(a.sweep).stem, x=a.x, command=cmd)
    print(f"[sweep] report: {path}")
    if not a.report_only:
        return 1 if any(j.status != "done" for j in jobs) else 0
    return 0

