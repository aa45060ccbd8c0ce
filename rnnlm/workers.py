"""Worker processes: map a function over a stream of items in other processes, in order, with
only a few items in flight, for work (subword encoding) slow enough to share out.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def worker_count() -> int:
    return len(os.sched_getaffinity(0))



_installed: Callable[[Any], Any] | None = None



def _install(function: Callable[[Any], Any]) -> None:
    global _installed
    _installed = function



def _call_installed(item: Any) -> Any:
    assert _installed is not None
    return _installed(item)



def parallel_map(function: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """map(function, items) in worker processes: results in order, only a few items in flight.

    `function` is sent to each worker once; a bounded queue (unlike Pool.imap) keeps the
    reader from running ahead of the workers with the whole corpus.
    """
    workers = worker_count()
    context = multiprocessing.get_context("spawn")  # fork is unsafe beside the threads of torch and Rich
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_install, initargs=(function,)) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(_submit_without_sigint(pool, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()



def _submit_without_sigint(pool: ProcessPoolExecutor, item: Any) -> Future[Any]:
    """Submit with SIGINT blocked: the workers the pool starts meanwhile inherit the block, so
    Ctrl-C reaches this process alone, which stops the pool and exits quietly (130)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(_call_installed, item)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
