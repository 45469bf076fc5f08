"""Independent, deterministic analysis jobs run in worker processes (joblib/loky); results in job order.

Each job computes exactly what it computes alone (its own seeds, single-threaded BLAS in its worker),
so a result does not depend on the number of workers. `VISBLIND_JOBS` sets the number of workers
(default: the CPUs this process may use); 1 runs the jobs in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


def n_workers(n_jobs: int | None = None) -> int:
    """The number of worker processes: `n_jobs`, else $VISBLIND_JOBS, else the usable CPUs."""
    if n_jobs is None:
        env = os.environ.get("VISBLIND_JOBS", "").strip()
        if env:
            try:
                n_jobs = int(env)
            except ValueError:
                raise ValueError(f"VISBLIND_JOBS must be a whole number, got {env!r}") from None
        else:
            n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise ValueError(f"the number of analysis workers must be >= 1, got {n_jobs}")
    return n_jobs


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], n_jobs: int | None = None) -> list[Any]:
    """[fn(*job) for job in jobs], spread over worker processes when more than one worker and job."""
    workers = min(n_workers(n_jobs), len(jobs))
    if workers <= 1:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed

    # inner_max_num_threads=1: BLAS runs single-threaded in each worker, as the jobs are already spread over the CPUs
    from joblib import parallel_config

    with parallel_config(backend="loky", inner_max_num_threads=1):
        return list(Parallel(n_jobs=workers)(delayed(fn)(*job) for job in jobs))
