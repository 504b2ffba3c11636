"""Shared fixtures: start methods, leak checks, bounded waits, and helpers several modules use."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import multiprocessing
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import strategies as st

# Every illegal transition in the dispatcher's ledger raises (LedgerError) instead of being
# logged, and the ledger audits itself after each transition: a test cannot pass over a bug.
os.environ["EVENTMP_STRICT_LEDGER"] = "1"

from eventmp import Event, EventDispatcher
from eventmp.ledger import Ledger
from eventmp.matching import Rule
from eventmp.tail import FileTailGenerator
from eventmp.testing import ErrorCollector, RecordingHandler

Ledger.strict = True

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]

# Generous upper bounds for waits: they only matter when something is broken.
WAIT = 30.0

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


# == handlers shared by several test modules (module level: spawn/forkserver workers import
# them from here, by reference) ==================================================================


class GatedRecorder(RecordingHandler):
    """Records each event once the file ``gate`` exists, waiting at most ``limit`` seconds."""

    def __init__(self, path: Path, gate: Path, limit: float = WAIT) -> None:
        super().__init__(path)
        self.gate = os.fspath(gate)
        self.limit = limit

    def process_event(self, event: Event) -> bool:
        deadline = time.monotonic() + self.limit
        while not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().process_event(event)


def data_of(records: list[dict[str, Any]]) -> list[Any]:
    return [record["data"] for record in records]


class HangOn:
    """Does nothing, except that the event whose data is ``blocked`` waits for ``gate``."""

    def __init__(self, gate: Path, blocked: object) -> None:
        self.gate = os.fspath(gate)
        self.blocked = blocked

    def process_event(self, event: Event) -> bool:
        deadline = time.monotonic() + WAIT
        while event.data == self.blocked and not os.path.exists(self.gate):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return True


class LineRecorder:
    """Appends each event's data as a JSON line to ``path``, with one write: cheap for floods.

    With ``hang``, the event that ``hang`` blocks on first waits for its gate (see HangOn).
    """

    def __init__(self, path: Path, hang: HangOn | None = None) -> None:
        self.path = os.fspath(path)
        self.hang = hang

    def process_event(self, event: Event) -> bool:
        if self.hang is not None:
            self.hang.process_event(event)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(event.data) + "\n").encode())
        finally:
            os.close(fd)
        return True

    def ran(self) -> list[Any]:
        """The data of every event whose handler ran, in the order they ran (lists as tuples)."""
        try:
            lines = Path(self.path).read_text().splitlines()
        except FileNotFoundError:
            return []
        data = [json.loads(line) for line in lines]
        return [tuple(item) if isinstance(item, list) else item for item in data]


@contextlib.contextmanager
def time_zone(spec: str) -> Iterator[None]:
    """Run the body with the process's local time zone set by a POSIX TZ string."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = spec
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


# == events and helpers shared by the tests of eventmp.actions ===================================

STAMP = 1_700_000_000.5


def tail_data(
    line: str = "Failed password for root from 203.0.113.9 port 22", **changes: Any
) -> Any:
    """Event data shaped like the file tail's, for an sshd line that matched a rule."""
    data: dict[str, Any] = {
        "input": "auth",
        "file": "/var/log/auth.log",
        "line_number": 42,
        "line": line,
        "rule": "ssh-failure",
        "match": "for root from 203.0.113.9",
        "groups": ["root", "203.0.113.9"],
        "named": {"user": "root", "ip": "203.0.113.9"},
    }
    data.update(changes)
    return data


def tail_event(handler: Any = None, **changes: Any) -> Event:
    """An event shaped like the file tail's, with a fixed timestamp."""
    return Event("tail", handler, tail_data(**changes), timestamp=STAMP)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a file, parsed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# == rules and log text drawn by hypothesis, for the matching's and the tail's property tests ====

# Pieces of patterns: anchors, classes that can match a newline or a \r, empty matches,
# lookarounds, atomic groups, backreferences, flags.
ATOMS = [
    "a", "b", "é", "1", " ", ",", "x", r"\s", r"\S", r"\w", r"\W", r"\d", r"\D", "[^a]", "[^ ]",
    "[^ab]", ".", "(?s:.)", r"\n", r"\r", "[\\n]", "[a-z]", "[\\x00-\\x7f]", "^", "$", r"\A", r"\Z",
    r"\b", r"\B", "(?=a)", "(?!b)", "(?<=a)", "(?<!\\s)", "(?<![^a])", "(a|b)", "(a)", "(?:ab|a)",
    "[\\s,]", "(?>a*)", "a*+", "\ufffd", "(?i:A)", "(?m:^)", "(?m:$)",
]  # fmt: skip
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "*?"]

# Bytes of log text: ASCII, CR and LF, multibyte UTF-8 and its pieces, invalid bytes.
TOKENS = [
    b"a", b"b", b"x", b"1", b" ", b",", b"\n", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b"\xe2\x82\xac",
    b"\xe2\x82", b"\xff", b"\x80", b"\t", b"ab", b"\xf0\x9f\x98\x80",
]  # fmt: skip


SIMPLE = ["a", "b", "x", "1", " "]
ZERO_WIDTH = ("^", "$", r"\A", r"\Z", r"\b", r"\B")


@st.composite
def patterns(draw: st.DrawFn) -> str:
    """A random pattern that compiles: one to three atoms (plain letters often), maybe repeated."""
    atoms = st.one_of(st.sampled_from(SIMPLE), st.sampled_from(ATOMS))
    parts = draw(st.lists(st.tuples(atoms, st.sampled_from(QUANTIFIERS)), min_size=1, max_size=3))
    text = "".join(atom + ("" if atom in ZERO_WIDTH else q) for atom, q in parts)
    if draw(st.booleans()) and "(a)" in text:
        text += r"\1"
    try:
        re.compile(text)
    except re.error:
        return "a"
    return text


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    """One to four rules with random patterns, excludes and quick flags."""
    rules = []
    for number in range(draw(st.integers(1, 3))):
        exclude = draw(patterns()) if draw(st.integers(0, 3)) == 0 else None
        rules.append(
            Rule(
                f"r{number}",
                re.compile(draw(patterns())),
                None,
                exclude=None if exclude is None else re.compile(exclude),
                quick=draw(st.booleans()),
            )
        )
    return rules


log_texts = st.lists(
    st.one_of(st.sampled_from([b"a", b"b", b"\n", b"x"]), st.sampled_from(TOKENS)), max_size=60
).map(b"".join)


# == tails on real files, shared by the tests of eventmp.tail and eventmp.tail_lines =============

MakeTail = Callable[..., FileTailGenerator]

EVERYTHING = re.compile("")


@pytest.fixture
def make_tail() -> Iterator[MakeTail]:
    """Build tails (a catch-all rule unless given rules); stop them all after the test."""
    made: list[FileTailGenerator] = []

    def make(
        *paths: Path | str, rules: list[Rule] | None = None, **options: Any
    ) -> FileTailGenerator:
        options.setdefault("rescan_interval", 0)
        options.setdefault("checkpoint_interval", 0)
        if rules is None:
            rules = [Rule("all", EVERYTHING, "handler")]
        tail = FileTailGenerator([os.fspath(p) for p in paths], rules, **options)
        made.append(tail)
        return tail

    yield make
    for tail in made:
        tail.stop()


def append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as out:
        out.write(data.encode() if isinstance(data, str) else data)


def poll(tail: FileTailGenerator, *, settle: bool = True) -> list[Event]:
    """One poll, settling each event as the dispatcher would once its handler returned."""
    events = tail.get_events()
    if settle:
        for event in events:
            tail.settled(event, None)
    return events


def lines(events: list[Event]) -> list[str]:
    return [event.data["line"] for event in events]


def numbered(events: list[Event]) -> list[tuple[int, str]]:
    return [(event.data["line_number"], event.data["line"]) for event in events]


def poll_until_read(tail: FileTailGenerator, count: int) -> list[Event]:
    """Poll until ``count`` lines were read (each poll reads at least one); the events."""
    events: list[Event] = []
    for _ in range(count + 5):
        events += poll(tail)
        if tail.lines_read >= count:
            break
    return events


# Exponential backtracking: each run of digits (no "x" follows) costs 2**len steps, far more
# than SLOWEST below on any machine, and still well under max_line_bytes.
CATASTROPHIC = re.compile(r"(\d+)+x")
DIGITS = "1" * 20
SLOWEST = 0.002  # slow_line_seconds of these tests: far below what one such line costs
