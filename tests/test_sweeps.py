"""Sweep files: every grid point, rendered exactly as the W&B agent renders it, parses; one point
runs; ``coattn sweep`` runs a tiny grid locally and writes the report."""
from __future__ import annotations

import csv

import pytest
import yaml

from coattn.cli import main
from coattn.tools import sweep as sw
from tests.conftest import REPO
from tests.test_cli import tiny_args

SWEEPS = REPO / "experiments" / "sweeps"
SWEEP_FILES = ["depth.yaml", "temperature.yaml"]
ABLATION_SWEEPS = [REPO / "experiments" / "ablation" / n for n in ("depth.yaml", "cascades.yaml", "temperature.yaml")]


def agent_render(command: list[str], run_config: dict) -> list[str]:
    """What ``wandb agent`` runs for one run: wandb.wandb_agent.Agent._command_run's own steps."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_command = sweep_utils.create_sweep_command(list(command))
    sweep_vars = sweep_utils.create_sweep_command_args({"args": run_config})
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = ["coattn"]
    sweep_vars["env"] = ["/usr/bin/env"]
    out = []
    for c in sweep_command:
        c = str(c)
        if c.startswith("${") and c.endswith("}"):
            out += sweep_vars.get(c[2:-1]) or []
        else:
            out.append(c)
    return out


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_file_format(name):
    cfg = sw.load_sweep(SWEEPS / name)
    assert cfg["method"] == "grid" and cfg["metric"] == {"name": "val/t2a_mAP@10", "goal": "maximize"}
    assert cfg["command"] == ["${env}", "coattn", "fit", "--config", "experiments/clotho_iterating.yaml", "${args}"]
    # block list in the file (a flow list with ${...} inside is not valid YAML)
    assert "  - ${args}" in (SWEEPS / name).read_text()


def test_grids_are_what_the_issue_asks():
    depth = sw.grid_points(sw.load_sweep(SWEEPS / "depth.yaml"))
    assert len(depth) == 16
    assert {(p["model.cascade.init_args.kind"], p["model.cascade.init_args.depth"]) for p in depth} == \
        {(k, d) for k in ("stacking", "iterating") for d in range(1, 9)}
    temp = sw.grid_points(sw.load_sweep(SWEEPS / "temperature.yaml"))
    fixed = sorted(p["model"]["temperature"] for p in temp if not p["model"]["learn_temperature"])
    learned = [p["model"] for p in temp if p["model"]["learn_temperature"]]
    assert fixed == [0.01, 0.02, 0.05, 0.07, 0.1, 0.2] and learned == [{"temperature": 0.07, "learn_temperature": True}]


@pytest.mark.parametrize("path", [SWEEPS / n for n in SWEEP_FILES] + ABLATION_SWEEPS,
                         ids=lambda p: p.parent.name + "/" + p.name)
def test_every_point_renders_as_the_agent_and_parses(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the sweep command names experiments/... relative to the clone
    cfg = sw.load_sweep(path)
    points = sw.grid_points(cfg)
    commands = []
    for p in points:
        run_config = {k: {"value": v} for k, v in p.items()}
        ours = sw.render_command(cfg["command"], run_config)
        assert ours == agent_render(cfg["command"], run_config)
        assert ours.index("--config") < ours.index(sw.agent_flags(run_config)[0])  # ${args} after --config
        commands.append(ours)
    for p, resolved in zip(points, sw.parse_commands(commands)):  # LightningCLI's parser; nothing instantiated
        for key, value in p.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    assert resolved[key][k] == v
            else:
                node = resolved
                for part in key.split("."):
                    node = node[part]
                assert node == value


def test_bad_point_is_reported():
    with pytest.raises(ValueError, match="does not parse"):
        sw.parse_command(["/usr/bin/env", "coattn", "fit", "--config", str(REPO / "experiments/demo.yaml"),
                          "--model.cascade.init_args.kind=sideways"])


def test_args_must_follow_config(tmp_path):
    bad = yaml.safe_load((SWEEPS / "depth.yaml").read_text())
    bad["command"] = ["${env}", "coattn", "fit", "${args}", "--config", "x.yaml"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="after '--config'"):
        sw.load_sweep(tmp_path / "bad.yaml")


def test_report_from_results(tmp_path):
    """Mean and spread over seeds, the best point marked, one PNG per metric."""
    rows = [("p000_s0", 0, 0, "stacking", 1, 0.30), ("p000_s1", 0, 1, "stacking", 1, 0.40),
            ("p001_s0", 1, 0, "stacking", 2, 0.50), ("p001_s1", 1, 1, "stacking", 2, 0.60),
            ("p002_s0", 2, 0, "iterating", 1, 0.20), ("p002_s1", 2, 1, "iterating", 1, 0.20)]
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "point", "seed", "model.cascade.init_args.kind", "model.cascade.init_args.depth", "status",
                    "seconds", "test/t2a_mAP@10", "test/t2a_R@1", "test/t2a_R@10", "error"])
        for name, point, seed, kind, depth, v in rows:
            w.writerow([name, point, seed, kind, depth, "done", 1.0, v, v / 2, v * 2, ""])
    text = sw.report(tmp_path, title="t").read_text()
    assert "| stacking | 2 | 2 | 0.5500 **(best)** | 0.0707 | 0.5000 | 0.6000 |" in text
    assert (tmp_path / "test_t2a_mAP@10.png").stat().st_size > 1000


@pytest.mark.slow
def test_one_point_runs(tiny_clotho, tmp_path, monkeypatch):
    """A depth point (iterating, depth 3) as the agent renders it, on the demo config and tiny data."""
    monkeypatch.chdir(tmp_path)
    cfg = sw.load_sweep(SWEEPS / "depth.yaml")
    point = [p for p in sw.grid_points(cfg) if p["model.cascade.init_args.depth"] == 3
             and p["model.cascade.init_args.kind"] == "iterating"][0]
    argv = sw.replace_config(sw.render_command(cfg["command"], point), str(REPO / "experiments/demo_scratch.yaml"))
    assert argv[:3] == ["/usr/bin/env", "coattn", "fit"]
    extra = [a for a in tiny_args(tiny_clotho) if not a.startswith("--config") and not a.endswith("demo_scratch.yaml")]
    monkeypatch.setenv("COATTN_RUN_DIR", str(tmp_path / "point"))
    main([*argv[2:], *extra, "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
          "--model.evaluation.bootstrap=0"])
    assert (tmp_path / "point/checkpoints/last.ckpt").is_file()  # relocated from runs/demo_scratch/checkpoints
    assert not (tmp_path / "runs").exists()
    saved = next((tmp_path / "point").rglob("coattn_config.yaml")).read_text()
    assert "depth: 3" in saved and "kind: iterating" in saved


@pytest.mark.slow
def test_coattn_sweep_runs_a_tiny_grid_and_writes_the_report(tiny_clotho, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = yaml.safe_load((SWEEPS / "depth.yaml").read_text())
    tiny["parameters"] = {"model.cascade.init_args.kind": {"value": "iterating"},
                          "model.cascade.init_args.depth": {"values": [1, 2]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    extra = [a for a in tiny_args(tiny_clotho) if not a.startswith("--config") and not a.endswith("demo_scratch.yaml")]
    rc = main(["sweep", "tiny.yaml", "--config", str(REPO / "experiments/demo_scratch.yaml"), "--out", "sw",
               "--seeds", "0", "--in-process", "--extra", *extra, "--trainer.limit_train_batches=1",
               "--trainer.limit_val_batches=1", "--model.evaluation.bootstrap=0"])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "sw/results.csv").open()))
    assert [(r["model.cascade.init_args.depth"], r["seed"], r["status"]) for r in rows] == [("1", "0", "done"),
                                                                                            ("2", "0", "done")]
    assert all(r["test/t2a_mAP@10"] != "" and r["val/t2a_mAP@10 (best)"] != "" for r in rows)
    for r in rows:  # each run in its own folder: checkpoints and test results never shared
        assert (tmp_path / "sw/runs" / r["run"] / "results/test/metrics.json").is_file()
    report = (tmp_path / "sw/report.md").read_text()
    assert "| depth | n | mean | std | min | max |" in report and "(best)" in report
    assert (tmp_path / "sw/test_t2a_mAP@10.png").is_file()
    # rerunning resumes: finished runs are read back, not trained again
    assert main(["sweep", "tiny.yaml", "--config", str(REPO / "experiments/demo_scratch.yaml"), "--out", "sw",
                 "--seeds", "0", "--in-process", "--extra", *extra]) == 0
    assert len(list(csv.DictReader((tmp_path / "sw/results.csv").open()))) == 2


def test_dry_run_prints_the_agent_commands(capsys):
    assert main(["sweep", str(SWEEPS / "depth.yaml"), "--dry-run", "--config", "experiments/demo.yaml"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 16
    assert lines[0].startswith("/usr/bin/env coattn fit --config experiments/demo.yaml --model.cascade.init_args")


def test_subprocess_runner_plumbing(tmp_path, monkeypatch):
    """--parallel runs `coattn fit` then `coattn test` as subprocesses, each in its own COATTN_RUN_DIR
    (subprocess.run faked: it writes what the real commands would)."""
    import json
    import threading

    calls, lock = [], threading.Lock()

    class Done:
        returncode = 0

    real_run = sw.subprocess.run

    def fake_run(argv, *args, env=None, **kwargs):
        if not argv or argv[0] != "/usr/bin/env":  # anything else (git, ...) runs for real
            return real_run(argv, *args, env=env, **kwargs)
        run_dir = tmp_path / env["COATTN_RUN_DIR"]
        with lock:
            calls.append((list(argv), env["COATTN_RUN_DIR"], env["PATH"].split(":")[0]))
        if "fit" in argv:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints/best.ckpt").write_bytes(b"x")
            (run_dir / "logs").mkdir(exist_ok=True)
            (run_dir / "logs/metrics.csv").write_text("epoch,val/t2a_mAP@10\n0,0.25\n1,0.5\n")
        else:
            value = 0.2 if "--model.cascade.init_args.kind=iterating" in argv else 0.1
            (run_dir / "results/test").mkdir(parents=True, exist_ok=True)
            (run_dir / "results/test/metrics.json").write_text(json.dumps({"metrics": {"t2a_mAP@10": value}}))
        return Done()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sw.subprocess, "run", fake_run)
    sweep = sw.load_sweep(SWEEPS / "depth.yaml")
    jobs = sw.run_sweep(sweep, tmp_path / "out", base="base.yaml", seeds=[0, 1], max_runs=2, parallel=2)
    assert [(j.params["model.cascade.init_args.kind"], j.seed, j.status) for j in jobs] == \
        [("stacking", 0, "done"), ("stacking", 1, "done"), ("iterating", 0, "done"), ("iterating", 1, "done")]
    assert all(j.val == {"best": 0.5, "last": 0.5} for j in jobs)
    fits = [c for c in calls if "fit" in c[0]]
    tests = [c for c in calls if "test" in c[0]]
    assert len(fits) == len(tests) == 4 and len({c[1] for c in fits}) == 4  # one folder per run
    argv = fits[0][0]
    assert argv[:5] == ["/usr/bin/env", "coattn", "fit", "--config", "base.yaml"]
    assert argv[-1].startswith("--seed_everything=")
    assert all(c[0][-1].startswith("--ckpt_path=") and c[0][-1].endswith("best.ckpt") for c in tests)
    assert fits[0][2].endswith("bin")  # this environment's console scripts first on PATH
    rows = list(csv.DictReader((tmp_path / "out/results.csv").open()))
    assert [float(r["test/t2a_mAP@10"]) for r in rows] == [0.1, 0.1, 0.2, 0.2]
