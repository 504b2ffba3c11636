"""The tail's state file: each followed file's position, saved atomically, read back at start.

Runs in the parent process, in the dispatcher thread (called by :mod:`eventmp.tail` at its
polls, as outcomes arrive, and when it stops). The format and what a saved offset promises
are in docs/tailing.md, "Checkpoints".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile

__all__ = ["STATE_VERSION", "Entry", "load_state", "save_state"]

logger = logging.getLogger("eventmp")

STATE_VERSION = 1
_KEYS = ("inode", "device", "offset", "line")

Entry = dict[str, int]  # {"inode", "device", "offset", "line"}


def save_state(path: str, entries: dict[str, Entry]) -> None:
    """Write ``entries`` to ``path`` so that a crash leaves the old file or the new one whole.

    A temporary file in the same directory, fsynced, renamed over the old one, and the
    directory fsynced. Raises OSError.
    """
    state = {"version": STATE_VERSION, "files": entries}
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(state, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def load_state(path: str, owner: object, start_at: str) -> dict[str, Entry]:
    """The entries of the state file at ``path``, by file path; {} if there is none.

    A file that cannot be read or is not a state file is a warning (naming ``owner``, the
    tail), and so is each bad entry, skipped: a broken checkpoint must not stop the input.
    """
    try:
        with open(path, encoding="utf-8") as file:
            state = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning(
            "%s: cannot read the state file %s (%s); starting at the %s of each file",
            owner,
            path,
            exc,
            start_at,
        )
        return {}
    files = state.get("files") if isinstance(state, dict) else None
    if (
        not isinstance(state, dict)
        or state.get("version") != STATE_VERSION
        or not isinstance(files, dict)
    ):
        logger.warning(
            "%s: the state file %s is not a version %d eventmp tail state; starting at the "
            "%s of each file",
            owner,
            path,
            STATE_VERSION,
            start_at,
        )
        return {}
    entries: dict[str, Entry] = {}
    for file_path, entry in files.items():
        if (
            isinstance(entry, dict)
            and all(type(entry.get(k)) is int and entry[k] >= 0 for k in _KEYS)
            and isinstance(file_path, str)
        ):
            entries[file_path] = {k: entry[k] for k in _KEYS}
        else:
            logger.warning(
                "%s: ignoring a bad entry for %r in the state file %s", owner, file_path, path
            )
    return entries


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable; some file systems refuse, which costs nothing here."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
