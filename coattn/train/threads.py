"""CPU thread policy for ``coattn fit/validate/test/predict`` on the CPU: never claim every core.

torch starts one OpenMP thread per core. Its threads spin-wait for each other at the end of every
parallel region, so when another process holds one core (a DataLoader worker, a second job on a
shared machine) every region waits for the thread that lost its core. Measured on 2 cores
(``benchmarks/threads.py``, a demo-sized training step, two runs): idle, 2 threads ran 1.4-1.6x
faster than 1; beside one competing process, 2 threads ran 3.7-4.2x *slower* than 1 (0.197 vs
0.053 s per step in run 1), and ``OMP_WAIT_POLICY=PASSIVE`` was no faster than 1 thread either way
(0.83-1.00x busy, 0.92-0.95x idle).

Policy: on the CPU, ``torch.set_num_threads(usable cores - 1)`` (at least 1): one core is left to
the data loading and to whatever else runs; on 2 cores that is 1 thread. Overrides: set
``OMP_NUM_THREADS`` (``OMP_NUM_THREADS=2 coattn fit ...``), which torch reads and this leaves alone.
GPU runs are not touched.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

OVERRIDE_ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cgroups' cpusets)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runs_on_cpu(accelerator) -> bool:
    """Whether a trainer with this ``accelerator`` setting trains on the CPU."""
    name = str(accelerator if accelerator is not None else "auto").lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False
    import torch

    return not (torch.cuda.is_available() or (getattr(torch.backends, "mps", None) is not None
                                              and torch.backends.mps.is_available()))


def apply_cpu_thread_policy(accelerator, environ=None) -> int | None:
    """Set torch's thread count for a CPU run (module docstring); the count set, or None when the run is not
    on the CPU or the user chose (``OMP_NUM_THREADS``)."""
    environ = os.environ if environ is None else environ
    if environ.get(OVERRIDE_ENV) or not runs_on_cpu(accelerator):
        return None
    import torch

    n = max(1, usable_cores() - 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("CPU run: %d torch thread(s) of %d cores (set OMP_NUM_THREADS to choose)", n, usable_cores())
    return n
