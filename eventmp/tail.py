"""The file tail: follow log files, ``tail -F`` style, and turn matching lines into events.

Everything here runs in the parent process, in the dispatcher thread. Each ``get_events()``
reads what was appended to the followed files since the last poll and returns one event per
complete line and matching rule; the rules' handlers run in the workers as usual. Cutting what
was read into lines and matching them is :mod:`eventmp.tail_lines` (partial lines, lines over
``max_line_bytes``, slow rules), finding and opening the files :mod:`eventmp.tail_files`, the
state file :mod:`eventmp.checkpoint`.

This module reads: rotation by rename (the old file is read to its end before its successor),
copy-truncate (a file shorter than the read position is read again from 0), standard input,
the per-poll budgets (bytes per file and in all, events, time) with ``has_more`` when one
stopped a poll, and the checkpoint offsets, which stay behind the oldest line whose events
have no outcome yet (``settled()``). What each of these promises, and their limits:
docs/tailing.md.
"""

from __future__ import annotations

import glob
import logging
import os
import select
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from .checkpoint import load_state, save_state
from .errors import EventAbandonedError, WorkerStartError
from .event import Event, EventGenerator
from .matching import (
    DEFAULT_MAX_LINE_BYTES,
    SLOW_LINE_SECONDS,
    LineMatcher,
    Rule,
    RuleStats,
    check_encoding,
)
from .tail_files import FileFinder, Identity, _File
from .tail_lines import Inflight, LineEvents

__all__ = ["DEFAULT_MAX_LINE_BYTES", "FileTailGenerator", "Rule", "RuleStats", "check_encoding"]

logger = logging.getLogger("eventmp")

_CHUNK = 1 << 20
# Each thread's one buffer that reads land in before they join a file's buffer: a fresh
# megabyte for every read would cost its page faults every time. Per thread, not per tail:
# a dispatcher polls its tails one after another, in its own thread.
_read_chunks = threading.local()
# What one poll may read and make: it runs in the dispatcher thread, which reads the workers'
# acknowledgements in between.
_BYTES_PER_POLL = 2 << 20  # per file
_POLL_BYTES = 4 << 20  # over all files
_EVENTS_PER_POLL = 5000
# Counting the lines skipped by a start at the end is cheap (bytes.count), so it may take
# bigger steps than reading, but it still happens in the dispatcher thread.
_COUNT_BYTES_PER_POLL = 64 << 20

# Outcomes that mean the handler never ran: the line must be read again next time.
_NEVER_RAN = (EventAbandonedError, WorkerStartError)
# The path that names standard input, as in most commands, and its place among the identities.
STDIN = "-"
_STDIN_IDENTITY: Identity = (-1, -1)
# What an event holds besides copies of its line: the Event, its dict, the file's and rule's
# names, a short group or two. The line itself is counted four times (the line, the match,
# the groups and the named groups may each copy it): see event_size() and docs/tailing.md.
_EVENT_OVERHEAD = 1024
_LINE_COPIES = 4


def line_event_sizes(events: list[Event]) -> list[int]:
    """:meth:`FileTailGenerator.event_size` of each of a tail's events (one comprehension)."""
    getsizeof = sys.getsizeof
    return [_LINE_COPIES * getsizeof(event.data["line"]) + _EVENT_OVERHEAD for event in events]


def _read_chunk() -> bytearray:
    chunk: bytearray | None = getattr(_read_chunks, "chunk", None)
    if chunk is None:
        chunk = _read_chunks.chunk = bytearray(_CHUNK)
    return chunk


class FileTailGenerator(FileFinder, EventGenerator):
    """Follows files (or glob patterns) and makes an event per line and matching rule.

    See the module's docstring for rotation, partial lines, start positions and checkpoints.
    ``track_outcomes`` is true so that the checkpoint stays behind lines still being handled;
    set it false on an instance driven without a dispatcher that reports outcomes, and the
    checkpoint follows the lines read instead. Without a ``state_file`` it starts false:
    there is no checkpoint to hold back, and the dispatcher keeps no books for its events.
    """

    track_outcomes = True

    def __init__(
        self,
        paths: Sequence[str],
        rules: Sequence[Rule],
        *,
        name: str = "tail",
        start_at: str = "end",
        encoding: str = "utf-8",
        state_file: str | os.PathLike[str] | None = None,
        once: bool = False,
        rescan_interval: float = 1.0,
        checkpoint_interval: float = 1.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        missing_ok: bool = False,
        slow_line_seconds: float = SLOW_LINE_SECONDS,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        if not paths:
            raise ValueError("a file tail needs at least one path")
        stdin = [os.fspath(p) for p in paths] == [STDIN]
        if not stdin and STDIN in [os.fspath(p) for p in paths]:
            raise ValueError("'-' (standard input) must be the only path of its input")
        if stdin and state_file is not None:
            raise ValueError("standard input has no checkpoint: give it no state_file")
        if start_at not in ("end", "beginning"):
            raise ValueError(f"start_at must be 'end' or 'beginning', got {start_at!r}")
        check_encoding(encoding)
        if rescan_interval < 0:
            raise ValueError(f"rescan_interval must be >= 0, got {rescan_interval!r}")
        if checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0, got {checkpoint_interval!r}")
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes!r}")
        if slow_line_seconds <= 0:
            raise ValueError(f"slow_line_seconds must be > 0, got {slow_line_seconds!r}")
        self.name = name
        # Standard input: read to its end, then the input is finished (in follow mode too).
        self.stdin = stdin
        self.patterns = (
            [] if stdin else [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        )
        self.rules = list(rules)
        self.start_at = start_at
        self.encoding = encoding
        self.state_file = None if state_file is None else os.path.abspath(os.fspath(state_file))
        if self.state_file is None:
            self.track_outcomes = False
        self.once = once
        self.rescan_interval = float(rescan_interval)
        self.checkpoint_interval = float(checkpoint_interval)
        self.max_line_bytes = int(max_line_bytes)
        self.missing_ok = bool(missing_ok)
        self.slow_line_seconds = float(slow_line_seconds)
        self._matcher = LineMatcher(
            self.rules, encoding, self.max_line_bytes, slow_seconds=self.slow_line_seconds
        )
        # Filled as the lines' events are made, emptied by settled(): the checkpoint's source.
        self._inflight: Inflight = {}
        self._lines = LineEvents(
            self, name, self._matcher, max_events=_EVENTS_PER_POLL, inflight=self._inflight
        )
        self._deadline = 0.0  # perf_counter: when this poll yields to the other inputs
        # True while the patterns match no regular file (from the first scan until one appears;
        # in once mode, for good): the command's ``--once`` exits 1 then, unless ``missing_ok``.
        self.matched_no_file = False

        self._files: dict[str, _File] = {}  # path -> the file it names now
        self._draining: dict[Identity, _File] = {}  # rotated away or deleted, read to the end
        # From the state file, by path.
        self._saved_entries = (
            {} if self.state_file is None else load_state(self.state_file, self, start_at)
        )
        self._stale: dict[str, dict[str, int]] = {}  # last entry of a path no longer open
        self._seen_paths: set[str] = set()
        self._literal = frozenset(p for p in self.patterns if glob.escape(p) == p)
        self._scanned = False
        self._stopped = False
        self._next_rescan = 0.0
        self._last_save = time.monotonic()
        self._last_saved: dict[str, dict[str, int]] | None = None
        self._turn = 0
        self._budget = _POLL_BYTES  # bytes this poll may still read
        self._cut_short = False  # a file stopped at a budget this poll, short of its end
        self._queued: deque[tuple[str, int]] = deque()  # once mode: files not opened yet
        self._done: dict[str, _File] = {}  # once mode: read to the end and closed
        self._identities: set[Identity] = set()  # once mode: files opened so far
        self._warned: set[tuple[str, str]] = set()
        self._retired_bytes = 0  # bytes of files closed or truncated, for the progress figures
        self._bytes_read = 0
        self._bytes_total = 0

    # == the generator API =======================================================================

    @property
    def bytes_read(self) -> int:
        """Bytes consumed so far over all files (skipped starts included), as of the last poll."""
        return self._bytes_read

    @property
    def bytes_total(self) -> int:
        """Size of every file being read (and of those read and closed), as of the last poll."""
        return self._bytes_total

    @property
    def lines_read(self) -> int:
        """Lines checked against the rules so far (a line cut into pieces counts once)."""
        return self._lines.lines_read

    def rule_stats(self) -> dict[str, RuleStats]:
        """Per rule name: events made, lines it spent over ``slow_line_seconds`` on, seconds."""
        return self._matcher.stats()

    def event_size(self, event: Event) -> int:
        """About what one of this tail's events holds in the parent, for max_pending_bytes.

        An upper estimate from the line's size alone (``sys.getsizeof`` costs nothing): a
        group that spans the line copies it once more in the match, the groups and the named
        groups; a rule whose match is the whole line shares the line's string instead.
        """
        return line_event_sizes([event])[0]

    def event_sizes(self, events: list[Event]) -> list[int]:
        return line_event_sizes(events)

    def get_events(self) -> list[Event]:
        if self._stopped or self.finished:
            return []
        now = time.monotonic()
        # A poll that has matched for this long yields: another input's lines wait at most
        # about that much behind a slow rule here (and one line's match, which nothing stops).
        self._deadline = time.perf_counter() + self.slow_line_seconds
        if not self._scanned:
            if self.stdin:
                self._files[STDIN] = _File(STDIN, os.dup(0), _STDIN_IDENTITY)
            else:
                self._rescan(now, initial=True)
            self._scanned = True
            self._next_rescan = now + self.rescan_interval
        elif not self.once and not self.stdin and now >= self._next_rescan:
            self._rescan(now, initial=False)
            self._next_rescan = now + self.rescan_interval
        events: list[Event] = []
        self._budget = _POLL_BYTES
        self._cut_short = False
        # Old files first: a rotated file's last lines come before its successor's first.
        for f in list(self._draining.values()):
            self._read(f, events, now)
            if f.at_eof and now - f.last_data >= self.rescan_interval:
                self._retire(f, events)
        while True:
            if self.once:
                self._open_queued(now)
            done_before = len(self._done)
            self._read_current(events, now)
            # A batch run goes on to its next files within the poll while the poll has room,
            # rather than one set of (maybe small) files per poll_interval.
            if (
                not self._queued
                or self._cut_short
                or self._budget <= 0
                or len(events) >= _EVENTS_PER_POLL
                or len(self._done) == done_before
            ):
                break
        if self.once and not self._queued and not self._files:
            self.finished = True
        # Stopped by a budget (a file's, the poll's, the events'), not by the end of the files:
        # ask to be polled again at once rather than after poll_interval, so that a backlog is
        # read without a pause between two budgets.
        self.has_more = not self.finished and (
            self._cut_short or self._budget <= 0 or len(events) >= _EVENTS_PER_POLL
        )
        self._update_progress()
        if self.state_file is not None and now - self._last_save >= self.checkpoint_interval:
            self._save(force=False)
            self._last_save = now
        return events

    def _read_current(self, events: list[Event], now: float) -> None:
        current = list(self._files.values())
        if current:
            self._turn = (self._turn + 1) % len(current)
            current = current[self._turn :] + current[: self._turn]
            # A file renamed to a name we follow may be the predecessor of a new file: its
            # last lines are read first.
            current.sort(key=lambda f: f.predecessor is not None)
        for f in current:
            if len(events) >= _EVENTS_PER_POLL:
                break
            if time.perf_counter() > self._deadline:
                self._cut_short = True
                break
            self._read(f, events, now)

    def settled(self, event: Event, exception: BaseException | None) -> None:
        self.settled_batch([(event, exception)])

    def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
        """Outcomes of this tail's events: a line is passed once each of its events has one."""
        inflight = self._inflight
        freed = False
        for event, exception in outcomes:
            entry = inflight.pop(id(event), None)
            if entry is None or entry[0] is not event:
                continue
            if exception is not None and isinstance(exception, _NEVER_RAN):
                continue  # the line stays outstanding: the checkpoint never passes it
            _event, outstanding, offset = entry
            slot = outstanding.get(offset)
            if slot is None:
                continue
            slot[0] -= 1
            if slot[0] <= 0:
                del outstanding[offset]
                freed = True
        # Outcomes keep coming while the dispatcher drains, when nothing polls this tail any
        # more: the checkpoint follows them at the same rate as during polls.
        if freed and self.state_file is not None and not self._stopped:
            now = time.monotonic()
            if now - self._last_save >= self.checkpoint_interval:
                self._save(force=False)
                self._last_save = now

    def stop(self) -> None:
        """Save the final checkpoint and close every file; later polls return nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.state_file is not None and self._scanned:
                self._save(force=True)
        finally:
            for f in [*self._files.values(), *self._draining.values()]:
                f.close()
            self._draining.clear()

    def __str__(self) -> str:
        return f"tail:{self.name}"

    # == reading =================================================================================

    def _read(self, f: _File, events: list[Event], now: float) -> None:
        if f.fd < 0:
            return
        if f.identity == _STDIN_IDENTITY:
            self._read_stream(f, events, now)
            return
        try:
            st = os.fstat(f.fd)
            f.size = st.st_size
            if f.count_until is not None and not self._count(f):
                self._cut_short = True  # counting goes on at the next poll
                return
            if not self.once and st.st_size < f.pos:
                self._truncated(f)
            pred = f.predecessor
            if pred is not None:
                if pred.fd >= 0 and not pred.at_eof:
                    return
                f.predecessor = None
            budget = min(_BYTES_PER_POLL, self._budget)
            f.at_eof = False  # until a read finds the end with every whole line cut
            while True:
                self._lines.cut_lines(f, events, self._deadline)
                if self._stops_here(events, budget):
                    return
                with memoryview(_read_chunk()) as chunk, chunk[: min(_CHUNK, budget)] as room:
                    read = os.preadv(f.fd, [room], f.pos)
                    if not read:
                        f.at_eof = True
                        break
                    f.buffer += room[:read]
                f.last_data = now
                f.pos += read
                budget -= read
                self._budget -= read
        except OSError as exc:
            self._warn_once(f.path, "read", "%s: cannot read %s: %s", self, f.path, exc)
            if self.once:
                self._finish(f)  # a batch run must end: give up on this file
            return
        self._warned.discard((f.path, "read"))
        if self.once:
            self._lines.emit_rest(f, events)
            self._finish(f)

    def _stops_here(self, events: list[Event], budget: int) -> bool:
        """Whether a file's read ends for this poll: enough events, bytes or time spent."""
        if len(events) >= _EVENTS_PER_POLL or budget <= 0 or time.perf_counter() > self._deadline:
            self._cut_short = True
            return True
        return False

    def _read_stream(self, f: _File, events: list[Event], now: float) -> None:
        """Standard input: what the pipe holds now, without blocking; its end ends the input.

        Not O_NONBLOCK: that flag belongs to the open file description, which a terminal or
        a pipe shares with the shell and the other commands of the pipeline. A poll with no
        timeout says whether a read would block instead.
        """
        readable = select.poll()
        readable.register(f.fd, select.POLLIN)
        budget = min(_BYTES_PER_POLL, self._budget)
        try:
            while True:
                self._lines.cut_lines(f, events, self._deadline)
                if self._stops_here(events, budget):
                    return
                if not readable.poll(0):
                    return  # nothing more for now
                data = os.read(f.fd, min(_CHUNK, budget))
                if not data:
                    break
                f.last_data = now
                f.pos += len(data)
                f.size = f.pos
                budget -= len(data)
                self._budget -= len(data)
                f.buffer += data
        except OSError as exc:
            logger.warning("%s: cannot read standard input: %s", self, exc)
        self._lines.emit_rest(f, events)
        self._finish(f)
        self.finished = True

    def _finish(self, f: _File) -> None:
        """Once mode: close a file read to its end; it stays known for the checkpoint."""
        f.close()
        del self._files[f.path]
        self._done[f.path] = f
        self._retired_bytes += f.pos

    def _count(self, f: _File) -> bool:
        """Count the lines a start at the end skips; true once done (the file starts there)."""
        assert f.count_until is not None
        target = min(f.count_until, f.size)  # a file truncated meanwhile: stop at its end
        budget = _COUNT_BYTES_PER_POLL
        while f.pos < target and budget > 0:
            data = os.pread(f.fd, min(_CHUNK, target - f.pos, budget), f.pos)
            if not data:
                break
            f.lines += data.count(b"\n")
            last = data.rfind(b"\n")
            if last >= 0:
                f.last_newline = f.pos + last
            f.pos += len(data)
            budget -= len(data)
        if f.pos < target:
            return False
        # Start after the last complete line: a line being written as we start comes out whole.
        f.pos = f.offset = f.last_newline + 1
        f.count_until = None
        return True

    def _truncated(self, f: _File) -> None:
        logger.info("%s: %s was truncated; reading it again from the start", self, f.path)
        self._retired_bytes += f.pos
        f.pos = f.offset = f.lines = 0
        f.buffer = bytearray()
        # Events of the old contents settle into the old table, which no longer counts.
        f.outstanding = OrderedDict()
        f.at_eof = False

    def _retire(self, f: _File, events: list[Event]) -> None:
        """Close a drained file that no path names any more."""
        self._lines.emit_rest(f, events)
        self._retired_bytes += f.pos
        del self._draining[f.identity]
        f.close()
        logger.info("%s: closed %s (rotated or deleted, read to its end)", self, f.path)

    def _update_progress(self) -> None:
        read = total = self._retired_bytes
        total += sum(size for _path, size in self._queued)
        for f in [*self._files.values(), *self._draining.values()]:
            read += f.pos
            total += max(f.size, f.pos)
        self._bytes_read = read
        self._bytes_total = total

    # == checkpoints =============================================================================

    def _entry(self, f: _File) -> dict[str, int] | None:
        position = f.position()
        if position is None:
            return None
        return {
            "inode": f.identity[1],
            "device": f.identity[0],
            "offset": position[0],
            "line": position[1],
        }

    def _snapshot(self) -> dict[str, dict[str, int]]:
        entries: dict[str, dict[str, int]] = {}
        # A path followed before but missing now keeps its entry while the path exists or is
        # named literally: a file recreated there while we are stopped is then known to be new.
        literal = {p for p in self.patterns if glob.escape(p) == p}
        for path, entry in [*self._saved_entries.items(), *self._stale.items()]:
            if path in literal or (path in self._seen_paths and os.path.lexists(path)):
                entries[path] = entry
        for path, f in [*self._done.items(), *self._files.items()]:
            current = self._entry(f)
            if current is not None:
                entries[path] = current
        return entries

    def _save(self, *, force: bool) -> None:
        assert self.state_file is not None
        entries = self._snapshot()
        if not force and entries == self._last_saved:
            return
        path = self.state_file
        try:
            save_state(path, entries)
        except OSError as exc:
            self._warn_once(path, "save", "%s: cannot save the checkpoint %s: %s", self, path, exc)
            return
        self._warned.discard((path, "save"))
        self._last_saved = entries
