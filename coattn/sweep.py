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
import concurrent.futures as cf
import contextlib
import copy
import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
TEST_METRICS = ("t2a_mAP@10", "t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_mAP@10", "a2t_R@1", "a2t_R@10")


# ----------------------------------------------------------------------------------------------
# Sweep files and the agent's rendering


def load_sweep(path: str | Path) -> dict:
    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(cfg, dict) or "method" not in cfg or not isinstance(cfg.get("parameters"), dict):
        raise ValueError(f"{path}: a W&B sweep file needs 'method' and a 'parameters' mapping")
    if cfg["method"] not in ("grid", "random", "bayes"):
        raise ValueError(f"{path}: method {cfg['method']!r} is not grid, random or bayes")
    command = cfg.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise ValueError(f"{path}: 'command' must be a YAML list of strings")
    if "${args}" in command and "--config" in command and command.index("${args}") < command.index("--config"):
        raise ValueError(f"{path}: '${{args}}' must come after '--config' (later arguments override the config)")
    return cfg


def agent_flags(params: dict[str, Any]) -> list[str]:
    """``${args}`` as the W&B agent renders it: ``--key=value`` with ``str(value)``.

    ``params``: name -> value, or name -> {"value": value} (a run config as the server sends it).
    Mirrors ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` (the test checks that).
    """
    return [f"--{k}={v['value'] if isinstance(v, dict) and set(v) == {'value'} else v}" for k, v in params.items()]


def render_command(command: list[str], params: dict[str, Any], program: str | None = None) -> list[str]:
    """The argv the agent would run for one point (``${env}`` -> /usr/bin/env, ``${args}`` -> flags)."""
    flags = agent_flags(params)
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [program] if program else [],
              "args": flags, "args_no_hyphens": [f[2:] for f in flags],
              "args_json": [json.dumps({k: _value(v) for k, v in params.items()})]}
    out: list[str] = []
    for c in command:
        if c.startswith("${") and c.endswith("}"):
            out += macros.get(c[2:-1], [])
        else:
            out.append(c)
    return out


def _value(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) and set(v) == {"value"} else v


def replace_config(argv: list[str], base: str | None) -> list[str]:
    """Swap the file after the first ``--config`` (or ``--config=FILE``) for ``base``."""
    if base is None:
        return list(argv)
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = base
            return out
        if a.startswith("--config="):
            out[i] = f"--config={base}"
            return out
    raise ValueError("the sweep command has no --config to replace; add `--config FILE` before ${args}")


def grid_points(sweep: dict) -> list[dict[str, Any]]:
    """Every point of a grid sweep, in the order W&B's engine proposes them (name -> value)."""
    with _quiet_sweeps():
        import sweeps
        from sweeps import RunState, SweepRun

    if sweep["method"] != "grid":
        raise ValueError("grid_points needs method: grid")
    runs: list = []
    points = []
    with _quiet_sweeps():
        while True:
            nxt = sweeps.next_run(sweep, runs)
            if nxt is None:
                return points
            points.append({k: v["value"] for k, v in nxt.config.items()})
            runs.append(SweepRun(name=f"p{len(runs)}", config=nxt.config, state=RunState.finished))


@contextlib.contextmanager
def _quiet_sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic v2 config-key warnings from the sweeps package
        yield


def _strip_launcher(argv: list[str]) -> list[str]:
    args = list(argv)
    while args and args[0] in ("/usr/bin/env", "env", "coattn", "python", "-m", "coattn.cli"):
        args.pop(0)
    return args


def parse_commands(argvs: list[list[str]]) -> list[dict]:
    """Parse rendered ``coattn fit ...`` commands with LightningCLI's parser, in process.

    Nothing is instantiated (no weights, no data); the parser is built once and reused, so a
    16-point grid costs one parser construction. Returns each resolved config (as
    ``--print_config`` would print it); raises ``ValueError`` with the parser's message on failure.
    """
    from coattn.cli import build_cli
    from coattn.runs import parse_only

    out, parser = [], None
    for argv in argvs:
        args = _strip_launcher(argv)
        err = io.StringIO()
        code: Any = 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                if parser is None:
                    with parse_only():
                        cli = build_cli(args)
                    parser, cfg = cli.parser, cli.config
                else:
                    cfg = parser.parse_args(args)
            except SystemExit as e:
                code = e.code
        if code not in (0, None):
            raise ValueError(f"`{' '.join(argv)}` does not parse:\n{err.getvalue().strip()[-2000:]}")
        sub = cfg.get("subcommand")
        out.append((cfg[sub] if sub else cfg).as_dict())
    return out


def parse_command(argv: list[str]) -> dict:
    return parse_commands([argv])[0]


# ----------------------------------------------------------------------------------------------
# Running


@dataclass
class Job:
    name: str
    point: int
    seed: int | None
    params: dict[str, Any]
    fit: list[str]
    run_dir: Path
    status: str = "pending"
    seconds: float = 0.0
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    error: str = ""


def _slug(params: dict[str, Any]) -> str:
    parts = []
    for k, v in params.items():
        v = _value(v)
        if isinstance(v, dict):
            parts += [f"{kk.rsplit('.', 1)[-1]}{vv}" for kk, vv in v.items()]
        else:
            parts.append(f"{k.rsplit('.', 1)[-1]}{v}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", "_".join(parts))[:120] or "run"


def _env(job: Job, group: str) -> dict[str, str]:
    env = dict(os.environ)
    env["COATTN_RUN_DIR"] = str(job.run_dir)
    env["COATTN_RUN_NAME"] = job.name
    env["COATTN_RUN_GROUP"] = group
    bindir = str(Path(sys.executable).parent)  # `coattn` of this environment first on PATH
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def test_command(fit: list[str], ckpt: Path) -> list[str]:
    argv = list(fit)
    argv[argv.index("fit")] = "test"
    return [*argv, f"--ckpt_path={ckpt}"]


def find_checkpoint(run_dir: Path) -> Path | None:
    for pattern in ("best*.ckpt", "last*.ckpt", "*.ckpt"):
        found = sorted(run_dir.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def read_val(run_dir: Path, metric: str) -> dict[str, float]:
    """Best and last value of ``metric`` in the run's CSV logs (the newest metrics.csv that has it:
    ``coattn test`` writes its own, without validation metrics)."""
    for path in sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True):
        vals = []
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                v = row.get(metric)
                if v not in (None, ""):
                    vals.append(float(v))
        if vals:
            return {"best": max(vals), "last": vals[-1]}
    return {}


def read_test(run_dir: Path) -> dict[str, float]:
    path = run_dir / "results" / "test" / "metrics.json"
    if not path.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text())["metrics"].items()}


def _run_argv(argv: list[str], env: dict[str, str], log: Path, in_process: bool) -> int:
    if not in_process:
        with log.open("a") as f:
            f.write("$ " + " ".join(argv) + "\n")
            f.flush()
            return subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    from coattn.cli import main

    args = _strip_launcher(argv)
    saved = {k: os.environ.get(k) for k in ("COATTN_RUN_DIR", "COATTN_RUN_NAME", "COATTN_RUN_GROUP")}
    os.environ.update({k: env[k] for k in saved})
    try:
        with log.open("a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            f.write("$ " + " ".join(argv) + "  (in process)\n")
            try:
                main(args)
                return 0
            except SystemExit as e:
                return int(e.code or 0)
            except Exception as e:  # a failed run is recorded, the sweep goes on
                import traceback

                traceback.print_exc(file=f)
                return 1
            finally:
                _finish_wandb()
                _release_log_handlers(f)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _release_log_handlers(stream) -> None:
    """Point logging handlers created during an in-process run at the real stderr again (they
    captured the run's log file, which is about to be closed)."""
    import logging

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream:
                h.setStream(sys.__stderr__)


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def execute(job: Job, group: str, metric: str, in_process: bool) -> Job:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    log = job.run_dir / "sweep.log"
    if read_test(job.run_dir):  # finished earlier: resume the sweep without redoing it
        job.status, job.test, job.val = "done", read_test(job.run_dir), read_val(job.run_dir, metric)
        return job
    env = _env(job, group)
    t0 = time.time()
    rc = _run_argv(job.fit, env, log, in_process)
    ckpt = find_checkpoint(job.run_dir) if rc == 0 else None
    if ckpt is None:
        job.status, job.error = "failed", f"fit exited {rc}" if rc else "fit wrote no checkpoint"
    else:
        rc = _run_argv(test_command(job.fit, ckpt), env, log, in_process)
        job.test = read_test(job.run_dir)
        job.status = "done" if rc == 0 and job.test else "failed"
        job.error = "" if job.status == "done" else f"test exited {rc}"
    job.val = read_val(job.run_dir, metric)
    job.seconds = time.time() - t0
    return job


def _metric_name(sweep: dict) -> tuple[str, str]:
    m = sweep.get("metric") or {}
    return m.get("name", "val/t2a_mAP@10"), m.get("goal", "maximize")


def run_sweep(sweep: dict, out: Path, base: str | None = None, seeds: list[int] | None = None,
              max_runs: int | None = None, parallel: int = 1, in_process: bool = False,
              extra: list[str] | None = None, program: str | None = None, echo=print) -> list[Job]:
    """Run the sweep; returns every job (point x seed). Writes results.csv as it goes."""
    with _quiet_sweeps():
        import sweeps
        from sweeps import RunState, SweepRun

    metric, goal = _metric_name(sweep)
    command = replace_config(render_command(sweep.get("command", DEFAULT_COMMAND), {}, program), base)
    if "fit" not in command:
        raise ValueError(f"the sweep command {command} has no `fit` subcommand")
    group = out.name
    cap = max_runs if max_runs is not None else sweep.get("run_cap")
    seeds_list: list[int | None] = list(seeds) if seeds else [None]
    engine_runs: list = []
    jobs: list[Job] = []
    point = 0
    per_batch = max(1, math.ceil(max(1, parallel) / len(seeds_list)))
    while cap is None or point < cap:
        n = per_batch if cap is None else min(per_batch, cap - point)
        with _quiet_sweeps():
            suggestions = [s for s in sweeps.next_runs(sweep, engine_runs, n=n) if s is not None]
        # grid: the engine returns fewer (or None) when the grid is exhausted
        seen = set()
        batch = []
        for s in suggestions:
            key = json.dumps(s.config, sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            params = {k: v["value"] for k, v in s.config.items()}
            argv = replace_config(render_command(sweep.get("command", DEFAULT_COMMAND), s.config, program), base)
            point_jobs = []
            for seed in seeds_list:
                name = f"p{point:03d}_{_slug(params)}" + (f"_seed{seed}" if seed is not None else "")
                fit = [*argv, *(extra or []), *([f"--seed_everything={seed}"] if seed is not None else [])]
                point_jobs.append(Job(name, point, seed, params, fit, out / "runs" / name))
            batch.append((s, point_jobs))
            point += 1
        if not batch:
            break
        todo = [j for _, pj in batch for j in pj]
        for j in todo:
            echo(f"[sweep] {j.name}: {' '.join(j.fit)}")
        if in_process or parallel <= 1:
            for j in todo:
                execute(j, group, metric, in_process)
                echo(f"[sweep] {j.name}: {j.status} in {j.seconds:.0f} s; test t2a_mAP@10 = {j.test.get('t2a_mAP@10')}")
        else:
            with cf.ThreadPoolExecutor(max_workers=parallel) as pool:
                for j in pool.map(lambda j: execute(j, group, metric, False), todo):
                    echo(f"[sweep] {j.name}: {j.status} in {j.seconds:.0f} s; "
                         f"test t2a_mAP@10 = {j.test.get('t2a_mAP@10')}")
        for s, pj in batch:
            done = [j for j in pj if j.status == "done" and j.val]
            summary = {metric: statistics.fmean(j.val["best"] for j in done)} if done else {}
            engine_runs.append(SweepRun(name=pj[0].name, config=s.config, summary_metrics=summary,
                                        history=[summary] if summary else [],
                                        state=RunState.finished if done else RunState.failed))
        jobs += todo
        write_csv(jobs, out / "results.csv", metric)
        if sweep["method"] == "grid" and len(suggestions) < n:
            break
    return jobs


# ----------------------------------------------------------------------------------------------
# Results and the report


def flatten_params(params: dict[str, Any]) -> dict[str, Any]:
    """Dict-valued parameters (``--model={...}``) become one column per key: ``model.temperature``."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def write_csv(jobs: list[Job], path: Path, metric: str) -> None:
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
        offset = 0.0 if numeric else (i - (len(series) - 1) / 2) * 0.08
        label = ", ".join(f"{_short(p)}={v}" for p, v in zip(others, key)) or "mean +- std"
        bars = ax.errorbar([v + offset for v in xs], [g["mean"] for g in gs], yerr=[g["std"] for g in gs],
                           marker="o", capsize=3, label=label, linestyle="-" if numeric and len(gs) > 1 else "none")
        color = bars[0].get_color()
        for xv, g in zip(xs, gs):
            ax.scatter([xv + offset] * len(g["values"]), g["values"], s=10, alpha=0.45, color=color)
    if numeric:
        vals = sorted({g[x] for g in groups})
        if vals and vals[0] > 0 and vals[-1] / vals[0] >= 10:
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


# ----------------------------------------------------------------------------------------------
# CLI


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
    metric, _ = _metric_name(sweep)
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


if __name__ == "__main__":
    sys.exit(main())
