"""Shared fixtures: start methods, leak checks, and bounded waits for every test."""

from __future__ import annotations

import faulthandler
import multiprocessing
import sys
from collections.abc import Iterator

import psutil
import pytest

from eventmp import EventDispatcher
from eventmp.testing import ErrorCollector

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]

# A hang that pytest-timeout does not catch (a deadlock in a C call) still dumps every thread.
faulthandler.enable(file=sys.stderr, all_threads=True)


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per start method."""
    return str(request.param)


@pytest.fixture
def errors() -> ErrorCollector:
    return ErrorCollector()


@pytest.fixture
def make_dispatcher(errors: ErrorCollector) -> Iterator[object]:
    """Build dispatchers wired to the ``errors`` collector; stop them all after the test."""
    made: list[EventDispatcher] = []

    def make(**options: object) -> EventDispatcher:
        options.setdefault("poll_interval", 0.05)
        dispatcher = EventDispatcher(**options)  # type: ignore[arg-type]
        dispatcher.error_handler(errors)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop(timeout=10)


def child_pids() -> set[int]:
    """Pids of this process's live children, forkserver and resource tracker excluded."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        pids.add(child.pid)
    return pids
