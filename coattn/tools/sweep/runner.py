"""Running a sweep: W&B's engine picks the points, each (point, seed) runs ``coattn fit`` then ``test``.

Every run gets ``COATTN_RUN_DIR=<out>/runs/<run>`` (coattn/train/runs.py moves all its outputs there),
so parallel runs never share a checkpoint, and a run whose ``results/test/metrics.json`` exists is
read back instead of trained again: an interrupted sweep resumes (a run killed mid-fit continues from
its ``last.ckpt``). Subprocesses by default (runs in
parallel, a crash stays in its run); ``in_process`` saves the interpreter and import start-up of
every run, which dominates tiny runs on few cores. ``subprocess.run`` is looked up at call time so
tests can fake it.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coattn.tools.sweep.grid import (DEFAULT_COMMAND, metric_name, param_value, quiet_sweeps, render_command,
                                     replace_config, strip_launcher)
from coattn.tools.sweep.report import write_csv


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
        v = param_value(v)
        if isinstance(v, dict):
            parts += [f"{kk.rsplit('.', 1)[-1]}{vv}" for kk, vv in v.items()]
        else:
            parts.append(f"{k.rsplit('.', 1)[-1]}{v}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", "_".join(parts))[:120] or "run"


def _env(job: Job, group: str) -> dict[str, str]:
    from coattn.train.runs import RUN_DIR_ENV, RUN_GROUP_ENV, RUN_NAME_ENV  # the run-folder contract of the CLI

    env = dict(os.environ)
    env.update({RUN_DIR_ENV: str(job.run_dir), RUN_NAME_ENV: job.name, RUN_GROUP_ENV: group})
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


def read_test(run_dir: Path, warn=None) -> dict[str, float]:
    """The run's test metrics; {} when it has none yet, or when its ``metrics.json`` is damaged (a kill
    mid-write, an edit): then ``warn`` (default: print to stderr) says so, and the sweep tests the run again."""
    path = run_dir / "results" / "test" / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(path.read_text(encoding="utf-8"))["metrics"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # truncated JSON, no "metrics", non-numbers
        (warn or (lambda m: print(m, file=sys.stderr, flush=True)))(
            f"[sweep] warning: {path} is damaged ({type(exc).__name__}: {str(exc)[:120]}): testing this run again")
        return {}


def _run_argv(argv: list[str], env: dict[str, str], log: Path, in_process: bool) -> int:
    if not in_process:
        with log.open("a") as f:
            f.write("$ " + " ".join(argv) + "\n")
            f.flush()
            return subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    from coattn.train.cli import run
    from coattn.train.runs import RUN_DIR_ENV, RUN_GROUP_ENV, RUN_NAME_ENV

    args = strip_launcher(argv)
    saved = {k: os.environ.get(k) for k in (RUN_DIR_ENV, RUN_NAME_ENV, RUN_GROUP_ENV)}
    os.environ.update({k: env[k] for k in saved})
    try:
        with log.open("a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            f.write("$ " + " ".join(argv) + "  (in process)\n")
            try:
                return run(args)
            except SystemExit as e:
                return int(e.code or 0)
            except Exception:  # a failed run is recorded, the sweep goes on
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
    done = read_test(job.run_dir)
    if done:  # finished earlier: resume the sweep without redoing it
        job.status, job.test, job.val = "done", done, read_val(job.run_dir, metric)
        return job
    env = _env(job, group)
    t0 = time.time()
    # an interrupted run continues from its last.ckpt (a fresh start over its checkpoints is refused)
    fit = job.fit if find_checkpoint(job.run_dir) is None else [*job.fit, "--ckpt_path=last"]
    rc = _run_argv(fit, env, log, in_process)
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


def run_sweep(sweep: dict, out: Path, base: str | None = None, seeds: list[int] | None = None,
              max_runs: int | None = None, parallel: int = 1, in_process: bool = False,
              extra: list[str] | None = None, program: str | None = None, echo=print) -> list[Job]:
    """Run the sweep; returns every job (point x seed). Writes results.csv as it goes."""
    with quiet_sweeps():
        import sweeps
        from sweeps import RunState, SweepRun

    metric, _ = metric_name(sweep)
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
        with quiet_sweeps():
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
        # the engine (bayes) learns from each point's best validation value, averaged over seeds
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
