"""``json``: :class:`JsonEventHandler`, and :func:`event_record`, the event as a JSON object.

The handler is built in the parent and writes in the worker: the file is opened there on first
use, and its descriptor is left behind when the handler travels. :func:`event_record` and the
encoding to one line of JSON serve :mod:`eventmp.actions.webhook` too, which posts the same
object, and :mod:`eventmp.actions.command` puts lists and dicts in the environment with the same
rules.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from ..errors import TemplateError
from ..event import Event, describe_originator
from ..handlers import EventHandler, file_mode, open_output
from ..templates import Fields, local_time
from .settings import _names, _text


def event_record(event: Event, names: list[str] | None = None) -> dict[str, Any]:
    """The object that ``json`` writes and ``webhook`` posts for ``event``.

    By default ``timestamp``, ``time``, ``originator`` and ``data``; with ``names``, those
    fields of :func:`eventmp.templates.fields` only, in that order (a field the event lacks
    raises :class:`~eventmp.errors.TemplateError`, as in a template).
    """
    data = event.data
    if names is None and (type(data) is dict or not isinstance(data, Mapping)):
        named = data.get("named") if type(data) is dict else None
        if (type(data) is not dict or _RECORD_FIELDS.isdisjoint(data)) and (
            not named or (type(named) is dict and _RECORD_FIELDS.isdisjoint(named))
        ):
            # No group or key of the data's takes a field's name (they would win, as in a
            # template): the fields are the event's own, worked out without Fields' lookups.
            timestamp = event.timestamp
            return {
                "timestamp": timestamp,
                "time": local_time(timestamp),
                "originator": describe_originator(event.originator),
                "data": data,
            }
    # Only the fields the record holds are worked out (the local time only if it is one).
    values = Fields(event)
    if names is None:
        return {
            "timestamp": values["timestamp"],
            "time": values["time"],
            "originator": values["originator"],
            "data": event.data,
        }
    record: dict[str, Any] = {}
    for name in names:
        try:
            record[name] = values[name]
        except KeyError:
            raise TemplateError(name, sorted(values)) from None
    return record


# The fields of the default record that a tail's data could also name.
_RECORD_FIELDS = frozenset({"timestamp", "time", "originator"})


def _jsonable(value: Any, active: set[int]) -> Any:
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        # NaN and the infinities are not JSON; json.dumps would write them anyway.
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return repr(value)
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return {_json_key(key): _jsonable(item, active) for key, item in value.items()}
            return [_jsonable(item, active) for item in value]
        finally:
            active.discard(id(value))
    return repr(value)


def _json_key(key: Any) -> str:
    """A dict key as ``json.dumps()`` writes it (a string, a number, true, false, null); any
    other key by its ``repr()``."""
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    return repr(key)


# Line separators that json.dumps writes raw with ensure_ascii=False (it escapes those below
# U+0020 itself): str.splitlines() and JavaScript split a record at them.
_LINE_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

# json.dumps(value, ensure_ascii=False, allow_nan=False), made of the C encoder itself, which
# refuses (rather than converts) what _jsonable() would change: an object of another type
# (default), NaN and the infinities, a key that is not a string, number, bool or None, and a
# value that contains itself. A record it writes is written as json.dumps() writes the
# record's _jsonable() copy; it spares that copy, a pass in Python over every value.
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


class _NotPlain(Exception):
    """A value the C encoder is not to write as it is (see _encode_plain_text)."""


def _refuse(value: Any) -> Any:
    raise _NotPlain


def _encode_plain_text(value: Any) -> str | None:
    """``value`` as json.dumps() writes it, or None if it holds anything _jsonable() changes."""
    if _make_encoder is None:
        return None
    # A new encoder each time: its record of the values being written (for loops) is its
    # own, and is left behind by an error.
    encoder = _make_encoder(
        {}, _refuse, json.encoder.encode_basestring, None, ": ", ", ", False, False, False
    )
    try:
        return "".join(encoder(value, 0))
    except (_NotPlain, ValueError, TypeError, RecursionError):
        return None


def _json_bytes(record: Mapping[str, Any], end: str = "") -> bytes:
    text = _encode_plain_text(record) if type(record) is dict else None
    if text is None:
        text = _encode(_jsonable(dict(record), set()))
    text += end
    if text.isascii():
        return text.encode("ascii")  # none of the characters below, no surrogate
    # Outside strings JSON has none of these characters, so each one escaped is still the
    # same string, and a record is one line for every line splitter.
    text = text.translate(_LINE_SEPARATORS)
    # A lone surrogate (text decoded with surrogateescape) cannot be UTF-8; written as \\udcXX
    # it is still a valid JSON escape for the same string.
    return text.encode("utf-8", "backslashreplace")


_STREAMS = ("stdout", "stderr")


def _write_stream(stream: IO[str], data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("utf-8"))
    else:
        # Bytes straight to the buffer: the stream's own encoding might not take every line.
        stream.flush()
        buffer.write(data)
        buffer.flush()
    stream.flush()


class JsonEventHandler(EventHandler):
    """Append one JSON object per event, one per line (JSON Lines).

    The object has ``timestamp``, ``time`` (ISO 8601, local), ``originator`` and ``data``; with
    ``fields`` (a list, or names separated by commas), only those fields of
    :func:`eventmp.templates.fields` (``["time", "file", "line", "ip"]``). A value that is not
    JSON (bytes, a set, an object) is written as its ``repr()``; NaN and the infinities too.

    The characters U+0085, U+2028 and U+2029, which ``str.splitlines()`` (and JavaScript)
    treat as line breaks, are written as the escapes ``\\u0085``, ``\\u2028`` and ``\\u2029``, so
    one record is one line for every reader; other non-ASCII text is written as UTF-8.

    ``file`` is a path, opened for append in the worker on first use, or
    ``"stdout"``/``"stderr"`` (the worker's streams, inherited from the parent). A path is
    opened with :func:`~eventmp.handlers.open_output`: a missing file is created with
    permissions ``mode`` (default ``0o600``; ``"0640"`` works too) whatever the umask, an
    existing one keeps its own, and a symbolic link at the path is refused (``OSError``,
    ``ELOOP``) instead of followed. Each line is written with a single ``write()`` and is on
    disk (in the page cache) when the handler returns, so several workers can append to one
    file without mixing their lines.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] = "stdout",
        fields: list[str] | str | None = None,
        mode: int | str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.file = _text(owner, "file", "stdout" if file is None else file)
        self.fields = _names(owner, "fields", fields)
        self.mode = file_mode(owner, mode)
        self._fd: int | None = None

    def settings(self) -> dict[str, Any]:
        shown = dict(super().settings())
        shown["mode"] = f"{self.mode:04o}"
        return shown

    def process_event(self, event: Event) -> bool:
        data = _json_bytes(event_record(event, self.fields), "\n")
        if self.file in _STREAMS:
            _write_stream(getattr(sys, self.file), data)
            return True
        if self._fd is None:
            self._fd = open_output(self.file, self.mode)
        # O_APPEND makes each write() land at the end, whole; a short write (a full disk) is
        # finished by a second one.
        written = os.write(self._fd, data)
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        return True

    def close(self) -> None:
        """Close the file, if this process opened it (it is reopened by the next event)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        # A file descriptor means nothing in another process: the worker opens its own.
        return dict(vars(self), _fd=None)
