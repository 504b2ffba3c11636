"""The forkserver, with eventmp imported in it before it forks any worker.

Runs in the parent process. Under the ``forkserver`` start method each worker is forked from a
server process; whatever that server has imported, the worker has too, and what it has not,
the worker imports after the fork, every time one starts (and a restart after a crash waits for
it). :func:`preload_workers` adds eventmp's worker-side module to the server's preload list, so
a new worker is ready as soon as it is forked: eventmp's dispatcher calls it before it starts
its workers; it changes nothing once the server runs, which multiprocessing starts once per
process.

The command goes further: :func:`start_early` starts the server (eventmp preloaded) before the
command has imported its own modules and read its pipeline, so that the two start-ups run side
by side on two CPUs rather than one after the other. It reads only the pipeline's
``[dispatcher] start_method``; when it cannot tell, it starts nothing, and the dispatcher starts
the server as any program's would. The docs: docs/design.md, "Starting workers".
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import tomllib
from collections.abc import Sequence
from typing import Any

__all__ = ["WORKER_MODULE", "pipeline_argument", "preload_workers", "start_early"]

# The module a worker runs (it imports the rest of what a worker needs).
WORKER_MODULE = "eventmp.processor"

# The options of `eventmp run` that take a value (the others are flags).
_RUN_VALUE_OPTIONS = frozenset({"--stats-interval", "--stats-format"})


def preload_workers(context: Any) -> None:
    """Have the forkserver of ``context`` import eventmp's worker side before it forks.

    Added to the modules already there (multiprocessing's default, ``__main__``, or the
    program's own :func:`multiprocessing.set_forkserver_preload`). Nothing for another start
    method.
    """
    if context.get_start_method() != "forkserver":
        return
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if WORKER_MODULE not in modules:
        context.set_forkserver_preload([*modules, WORKER_MODULE])


def pipeline_argument(argv: Sequence[str]) -> str | None:
    """The pipeline file of an ``eventmp run`` command line, or None if it is not one."""
    if not argv or argv[0] != "run":
        return None
    tokens = iter(argv[1:])
    for token in tokens:
        if token in _RUN_VALUE_OPTIONS:
            next(tokens, None)
        elif token == "--":
            return next(tokens, None)
        elif not token.startswith("-") or token == "-":
            return token
    return None


def start_early(argv: Sequence[str]) -> bool:
    """Start the forkserver now if ``argv`` runs a pipeline whose workers it will fork.

    True if it started it. Anything it cannot read is left for the command to report.
    """
    path = pipeline_argument(argv)
    if path is None or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file).get("dispatcher", {})
        method = settings.get("start_method", "forkserver")
    except (OSError, ValueError, AttributeError):
        return False
    if method != "forkserver":
        return False
    context = multiprocessing.get_context("forkserver")
    preload_workers(context)
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError:
        return False  # the dispatcher will try again, and say why if it fails
    return True
