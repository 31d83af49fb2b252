"""Sweep files and the W&B agent's rendering of them: read, enumerate, render, check by parsing.

A run must get the argv ``wandb agent`` would give it, or a local sweep measures something other
than the server's: ``render_command`` follows the agent's macros (tests/test_sweeps.py compares it
with wandb's own code on every point of the 5 sweep files). ``parse_commands`` checks points with
LightningCLI's parser without instantiating anything, so a 16-point grid costs one parser
construction instead of 16 model builds. The CLI API is touched in one place, ``_parse_only_cli``.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import yaml

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


def load_sweep(path: str | Path) -> dict:
    """The sweep file, checked; a missing file, YAML that does not parse or a file that is no W&B sweep is
    a ``ConfigError`` (a ValueError) naming the file (and the line)."""
    from coattn.errors import ConfigError, DataNotFoundError

    if not Path(path).is_file():
        raise DataNotFoundError(f"{path}: no such sweep file (a W&B sweep YAML: method, metric, parameters, command)")
    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}: {where}not valid YAML ({what})") from None
    if not isinstance(cfg, dict) or "method" not in cfg or not isinstance(cfg.get("parameters"), dict):
        raise ConfigError(f"{path}: a W&B sweep file needs 'method' and a 'parameters' mapping")
    if cfg["method"] not in ("grid", "random", "bayes"):
        raise ConfigError(f"{path}: method {cfg['method']!r} is not grid, random or bayes")
    command = cfg.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise ConfigError(f"{path}: 'command' must be a YAML list of strings")
    if "${args}" in command and "--config" in command and command.index("${args}") < command.index("--config"):
        raise ConfigError(f"{path}: '${{args}}' must come after '--config' (later arguments override the config)")
    return cfg


def metric_name(sweep: dict) -> tuple[str, str]:
    """The sweep's ``metric`` (name, goal); W&B's defaults for the project's sweeps otherwise."""
    m = sweep.get("metric") or {}
    return m.get("name", "val/t2a_mAP@10"), m.get("goal", "maximize")


def param_value(v: Any) -> Any:
    """A parameter's value, whether given plainly or as the server sends it (``{"value": v}``)."""
    return v["value"] if isinstance(v, dict) and set(v) == {"value"} else v


def agent_flags(params: dict[str, Any]) -> list[str]:
    """``${args}`` as the W&B agent renders it: ``--key=value`` with ``str(value)``.

    ``params``: name -> value, or name -> {"value": value} (a run config as the server sends it).
    Mirrors ``wandb.sdk.launch.sweeps.utils.create_sweep_command_args`` (the test checks that).
    """
    return [f"--{k}={param_value(v)}" for k, v in params.items()]


def render_command(command: list[str], params: dict[str, Any], program: str | None = None) -> list[str]:
    """The argv the agent would run for one point (``${env}`` -> /usr/bin/env, ``${args}`` -> flags)."""
    flags = agent_flags(params)
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [program] if program else [],
              "args": flags, "args_no_hyphens": [f[2:] for f in flags],
              "args_json": [json.dumps({k: param_value(v) for k, v in params.items()})]}
    out: list[str] = []
    for c in command:
        if c.startswith("${") and c.endswith("}"):
            out += macros.get(c[2:-1], [])
        else:
            out.append(c)
    return out


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
    with quiet_sweeps():
        import sweeps
        from sweeps import RunState, SweepRun

    if sweep["method"] != "grid":
        raise ValueError("grid_points needs method: grid")
    runs: list = []
    points = []
    with quiet_sweeps():
        while True:
            nxt = sweeps.next_run(sweep, runs)
            if nxt is None:
                return points
            points.append({k: v["value"] for k, v in nxt.config.items()})
            runs.append(SweepRun(name=f"p{len(runs)}", config=nxt.config, state=RunState.finished))


@contextlib.contextmanager
def quiet_sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic v2 config-key warnings from the sweeps package
        yield


def strip_launcher(argv: list[str]) -> list[str]:
    """The CLI's own arguments: ``/usr/bin/env coattn fit ...`` -> ``fit ...``."""
    args = list(argv)
    while args and args[0] in ("/usr/bin/env", "env", "coattn", "python", "-m", "coattn.cli"):
        args.pop(0)
    return args


def _parse_only_cli(args: list[str]) -> tuple[Any, Any]:
    """(parser, parsed config) of ``coattn <args>``, built without instantiating or running anything.

    The only place this package calls the CLI's parsing API.
    """
    from coattn.train.cli import parse_only

    cli = parse_only(args)
    return cli.parser, cli.config


def parse_commands(argvs: list[list[str]]) -> list[dict]:
    """Parse rendered ``coattn fit ...`` commands with LightningCLI's parser, in process.

    Nothing is instantiated (no weights, no data); the parser is built once and reused, so a
    16-point grid costs one parser construction. Returns each resolved config (as
    ``--print_config`` would print it); raises ``ValueError`` with the parser's message on failure.
    """
    out, parser = [], None
    for argv in argvs:
        args = strip_launcher(argv)
        err = io.StringIO()
        code: Any = 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                if parser is None:
                    parser, cfg = _parse_only_cli(args)
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
