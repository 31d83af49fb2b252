"""How loaded the machine was: every benchmark prints the load average before and after its run.

A timing on a shared machine means little without it: on 2 cores under other jobs' load the
per-pair loop once slowed far more than the tiled engine, and a 2.3x ratio read as 13.9x
(docs/benchmarks.md). Scripts in this folder import it directly (their folder is on sys.path):

    from loadavg import LoadAverage
    with LoadAverage() as load:      # prints "load average before: 0.12 / 0.30 / 0.25 (1 / 5 / 15 min, 2 cores)"
        ...                          # on exit: "load average after: ..."; load.before / load.after keep them
"""
from __future__ import annotations

import os


def load_average() -> str:
    """'1.02 / 0.87 / 0.60 (1 / 5 / 15 min, 2 cores)': runnable processes averaged over 1, 5, 15 minutes."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min, {os.cpu_count()} cores)"


class LoadAverage:
    """Context manager that prints (``quiet=False``) and keeps the load average before and after."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.before, self.after = quiet, "", ""

    def __enter__(self) -> "LoadAverage":
        self.before = load_average()
        if not self.quiet:
            print(f"load average before: {self.before}", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self.after = load_average()
        if not self.quiet:
            print(f"load average after:  {self.after}", flush=True)
