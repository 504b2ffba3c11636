"""Shared fixtures: start methods, leak checks, and bounded waits for every test."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import sys
from collections.abc import Iterator

import psutil
import pytest

# Every illegal transition in the dispatcher's ledger raises (LedgerError) instead of being
# logged, and the ledger audits itself after each transition: a test cannot pass over a bug.
os.environ["EVENTMP_STRICT_LEDGER"] = "1"

from eventmp import EventDispatcher
from eventmp.ledger import Ledger
from eventmp.testing import ErrorCollector

Ledger.strict = True

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
    """Pids of every live process this one started, directly or through its forkserver.

    The forkserver and the resource tracker themselves are left out (they live as long as the
    test session); a forkserver's children, the workers under the default start method, share
    its command line, so they are found as the server's children rather than by name.
    """
    pids: set[int] = set()
    for child in psutil.Process().children():
        try:
            cmdline = " ".join(child.cmdline())
            if "resource_tracker" in cmdline:
                continue
            if "forkserver" in cmdline:
                candidates = child.children(recursive=True)
            else:
                candidates = [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in candidates:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    pids.add(process.pid)
            except psutil.NoSuchProcess:
                continue
    return pids
