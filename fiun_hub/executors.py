"""Run independent per-repo work: in-process, or in a process pool.

Every task is a picklable dataclass with a ``repo`` field and every function is module-level; results come
back keyed by repo. A failed task stops the whole run (the caller then publishes nothing).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from .errors import BadInput

EXECUTORS = ("local",)


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], *, workers: int = 1, executor: str = "local",
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``{task.repo: fn(task)}`` for every task; ``workers > 1`` uses a process pool (forkserver)."""
    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; this version has: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise BadInput("--workers must be at least 1")
    out: dict[str, Any] = {}
    if workers == 1 or len(tasks) <= 1:
        for t in tasks:
            out[t.repo] = fn(t)
            if progress:
                progress(t.repo)
        return out
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(fn, t): t.repo for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                out[futures[f]] = f.result()
                if progress:
                    progress(futures[f])
    return out
