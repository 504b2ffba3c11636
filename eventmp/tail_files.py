"""Which files a tail follows: expanding its patterns, rotation by rename, opening safely.

Runs in the parent process, in the dispatcher thread, at a tail's rescans (every
``rescan_interval``) and as a batch run opens its next files. :class:`FileFinder` is the half
of :class:`eventmp.tail.FileTailGenerator` that knows files by their identity
``(st_dev, st_ino)``, decides where each one starts (a checkpoint entry, the end, the
beginning), and skips what is not a regular file; the other half reads them. What it
promises: docs/tailing.md, "Following files" and "Where a file starts".
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import stat
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .checkpoint import Entry

__all__ = ["FileFinder"]

logger = logging.getLogger("eventmp")

Identity = tuple[int, int]
_AT_END = "the end"
# A batch run over many files opens a few at a time, not one descriptor per file at once.
_ONCE_OPEN_FILES = 4


@dataclass
class _File:
    """One open file: where we are in it, and its lines whose events have no outcome yet."""

    path: str
    fd: int
    identity: Identity
    pos: int = 0  # where the next read starts
    offset: int = 0  # start of the bytes not yet cut into lines (pos - len(buffer))
    lines: int = 0  # newlines before ``offset``
    size: int = 0  # at the last fstat
    buffer: bytearray = field(default_factory=bytearray)
    # Line start offset -> [events without outcome, newlines before it]; oldest first.
    outstanding: OrderedDict[int, list[int]] = field(default_factory=OrderedDict)
    count_until: int | None = None  # counting skipped lines up to here (a start at the end)
    last_newline: int = -1  # while counting
    predecessor: _File | None = None  # the file this path named before a rotation
    at_eof: bool = False
    last_data: float = 0.0  # monotonic time of the last read that returned bytes

    def position(self) -> tuple[int, int] | None:
        """``(offset, lines before it)`` to save, or None while its start is not known."""
        if self.count_until is not None:
            return None
        for offset, (_count, lines) in self.outstanding.items():
            return offset, lines
        return self.offset, self.lines

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        self.buffer = bytearray()


class FileFinder:
    """Finds, opens and tracks a tail's files; the tail reads them (its attributes, below)."""

    patterns: list[str]
    once: bool
    start_at: str
    missing_ok: bool
    matched_no_file: bool
    state_file: str | None
    _literal: frozenset[str]
    _files: dict[str, _File]
    _draining: dict[Identity, _File]
    _saved_entries: dict[str, Entry]
    _stale: dict[str, Entry]
    _seen_paths: set[str]
    _queued: deque[tuple[str, int]]
    _identities: set[Identity]
    _warned: set[tuple[str, str]]

    def _entry(self, f: _File) -> Entry | None:
        raise NotImplementedError

    def _warn_once(self, path: str, kind: str, message: str, *args: object) -> None:
        """Log a failing file once, not at every poll, until it works again."""
        if (path, kind) in self._warned:
            return
        self._warned.add((path, kind))
        logger.warning(message, *args)

    def _rescan(self, now: float, *, initial: bool) -> None:
        matched: list[str] = []
        empty: list[str] = []  # patterns that match nothing
        for pattern in self.patterns:
            if pattern in self._literal:
                found = [pattern] if os.path.exists(pattern) else []
            else:
                found = sorted(glob.glob(pattern))
            if not found:
                empty.append(pattern)
            matched.extend(found)
        # The state file may sit in a followed directory: it is never a log.
        matched = [p for p in dict.fromkeys(matched) if p != self.state_file]
        if self.once:
            self._queue(matched)
            self._report_missing(empty, found_any=bool(self._queued), initial=initial)
            return

        # A path that no longer names the file we have open: drain that file, then close it.
        detached: dict[str, _File] = {}
        for path, f in list(self._files.items()):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as exc:
                self._warn_once(path, "stat", "%s: cannot stat %s: %s", self, path, exc)
                continue
            if st is not None and (st.st_dev, st.st_ino) == f.identity:
                continue
            logger.info(
                "%s: %s was %s; reading the old file to its end",
                self,
                path,
                "deleted" if st is None else "rotated",
            )
            del self._files[path]
            entry = self._entry(f)
            if entry is not None:
                self._stale[path] = entry
            f.last_data = now
            self._draining[f.identity] = f
            detached[path] = f

        found_any = False  # a regular file among the matches
        for path in matched:
            if path in self._files:
                found_any = True
                continue
            self._seen_paths.add(path)
            st = self._stat_regular(path)
            if st is None:
                continue
            found_any = True
            identity = (st.st_dev, st.st_ino)
            adopted = self._draining.pop(identity, None)
            if adopted is None and any(f.identity == identity for f in self._files.values()):
                continue  # the same file under a second name (a link): read it once
            if adopted is not None:
                logger.info("%s: %s is %s renamed; following it there", self, path, adopted.path)
                adopted.path = path
                self._files[path] = adopted
                continue
            opened = self._open(path, now, initial=initial)
            if opened is not None:
                opened.predecessor = detached.get(path)
                self._files[path] = opened
        self._report_missing(empty, found_any=found_any, initial=initial)

    def _report_missing(self, empty: list[str], *, found_any: bool, initial: bool) -> None:
        """Log patterns that match nothing, once (at the first scan); track an input without files.

        An input whose patterns match no regular file is one warning naming it (information
        with ``missing_ok``); in follow mode it goes on looking, silently. A pattern that
        matches nothing while another matches is a warning in once mode, information otherwise.
        """
        if initial:
            self.matched_no_file = not found_any
        elif found_any:
            self.matched_no_file = False  # follow mode: a file appeared
        if not initial:
            return
        if not found_any:
            level = logging.INFO if self.missing_ok else logging.WARNING
            waiting = "" if self.once else " (yet); waiting for one to appear"
            logger.log(level, "%s: no file matches %s%s", self, ", ".join(self.patterns), waiting)
            return
        level = logging.WARNING if self.once and not self.missing_ok else logging.INFO
        for pattern in empty:
            logger.log(level, "%s: no file matches %s (yet)", self, pattern)

    def _stat_regular(self, path: str) -> os.stat_result | None:
        """The stat of a regular file at ``path``; None if it is gone, unreadable or not one.

        A glob may match directories and other files that are not logs: they are skipped
        silently. A path named literally that is not a regular file is a warning (once).
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(path, "stat", "%s: cannot stat %s: %s", self, path, exc)
            return None
        if stat.S_ISREG(st.st_mode):
            return st
        if path in self._literal:
            self._warn_not_regular(path, st.st_mode)
        return None

    def _warn_not_regular(self, path: str, mode: int) -> None:
        self._warn_once(
            path,
            "type",
            "%s: %s is %s, not a regular file; skipping it",
            self,
            path,
            _file_kind(mode),
        )

    def _queue(self, matched: list[str]) -> None:
        """Once mode: note the files to read (and their sizes, for the progress figures)."""
        for path in matched:
            st = self._stat_regular(path)
            if st is not None:
                self._seen_paths.add(path)
                self._queued.append((path, st.st_size))

    def _open_queued(self, now: float) -> None:
        while self._queued and len(self._files) < _ONCE_OPEN_FILES:
            path, _size = self._queued.popleft()
            f = self._open(path, now, initial=True)
            if f is None:
                continue
            if f.identity in self._identities:
                f.close()  # the same file under a second name (a link): read it once
                continue
            self._identities.add(f.identity)
            self._files[path] = f

    def _open(self, path: str, now: float, *, initial: bool) -> _File | None:
        """Open a regular file; None (with a warning, once) if it is gone or is not one.

        The name was a regular file when it was stat()ed, but it may have been replaced since
        (a FIFO, a device): the open does not wait (``O_NONBLOCK``, so a FIFO without a writer
        does not hold the dispatcher thread), and the open descriptor is what is checked.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(path, "open", "%s: cannot open %s: %s", self, path, exc)
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                # No effect on a regular file's reads on Linux (open(2)), but a FUSE or network
                # file system is told the flags: reads are plain blocking preads, as before.
                os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            self._warn_once(path, "open", "%s: cannot stat %s: %s", self, path, exc)
            return None
        self._warned.discard((path, "open"))
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._warn_not_regular(path, st.st_mode)
            return None
        self._warned.discard((path, "type"))
        f = _File(path, fd, (st.st_dev, st.st_ino), size=st.st_size, last_data=now)
        entry, how = self._start_entry(path, f.identity, st.st_size, initial=initial)
        if entry is not None:
            f.pos = f.offset = entry["offset"]
            f.lines = entry["line"]
        elif how == _AT_END:
            f.count_until = st.st_size
        logger.info("%s: following %s from %s", self, path, how)
        return f

    def _start_entry(
        self, path: str, identity: Identity, size: int, *, initial: bool
    ) -> tuple[dict[str, int] | None, str]:
        """Where a newly opened file starts: a saved entry, or how (the module docstring)."""
        own = self._saved_entries.get(path)
        if own is not None and _identity(own) == identity and size >= own["offset"]:
            del self._saved_entries[path]
            return own, f"its checkpoint (byte {own['offset']}, line {own['line'] + 1})"
        for other, entry in self._saved_entries.items():
            if other != path and _identity(entry) == identity and size >= entry["offset"]:
                del self._saved_entries[other]
                return entry, f"the checkpoint of {other}, renamed (byte {entry['offset']})"
        if own is not None:
            # Kept: the entry's own file may turn up under another path later in this scan.
            return None, "the beginning (rotated or truncated since its checkpoint)"
        if initial and self.start_at == "end":
            return None, _AT_END
        return None, "the beginning"


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for a message: "a directory", "a FIFO"..."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return "a special file"


def _identity(entry: dict[str, int]) -> Identity:
    return (entry["device"], entry["inode"])
