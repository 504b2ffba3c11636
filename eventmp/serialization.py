"""All serialization between the processes happens here, before a message is queued.

Plain pickle (protocol 5) carries messages, events and their data: it is about 20 times faster
than dill. dill carries what pickle cannot: handlers (sent to a worker once, then referred to by
id), and event data that pickle refuses (a lambda in the data, say). Doing it here, in the
sending thread, means a pickling error belongs to the one event that caused it, instead of
being printed and lost in a ``multiprocessing.Queue`` feeder thread.
"""

from __future__ import annotations

import contextlib
import pickle
import traceback
from collections.abc import Iterable
from typing import Any

import dill

from .errors import RemoteError, RemoteTraceback, SerializationError
from .event import EventGenerator, describe_originator
from .handlers import describe_handler
from .messages import WireEvent

__all__ = [
    "dump_exception",
    "dump_handler",
    "dumps",
    "encode_events",
    "encode_single_events",
    "load_exception",
    "load_handler",
    "loads",
    "wire_originator",
]

PROTOCOL = 5
_PLAIN = (str, int, float, bool, type(None), bytes)


def dumps(message: Any) -> bytes:
    """Pickle a message envelope (only ints, strings, bytes and lists inside)."""
    return pickle.dumps(message, PROTOCOL)


loads = pickle.loads


def dump_handler(handler: Any) -> bytes:
    """Serialize a handler with dill, by value where pickle would go by reference to __main__.

    ``recurse=True`` makes dill follow only the globals a function really uses, instead of
    pickling all of ``__main__`` (which holds the dispatcher, its locks and threads).
    """
    try:
        return bytes(dill.dumps(handler, protocol=PROTOCOL, recurse=True))
    except BaseException as exc:
        raise SerializationError(
            f"handler {describe_handler(handler)} cannot be serialized for the worker process: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def load_handler(blob: bytes) -> Any:
    return dill.loads(blob)


def wire_originator(originator: Any) -> Any:
    """What the worker sees as the event's originator.

    Plain values travel as they are. A generator (the usual originator) holds files, sockets or
    threads and is never meant to travel: the worker gets its name. The parent keeps the
    original object for error events.
    """
    if isinstance(originator, _PLAIN) or not isinstance(originator, EventGenerator):
        return originator
    return describe_originator(originator)


class _DillValue:
    """Event data that plain pickle refused, carried as dill bytes inside a pickle."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (dill.loads, (self.blob,))


def _repair(item: WireEvent) -> WireEvent:
    """Make one event picklable, or raise SerializationError saying why it cannot be."""
    with contextlib.suppress(Exception):
        pickle.dumps(item, PROTOCOL)
        return item
    seq, handler_id, originator, data, timestamp = item
    try:
        pickle.dumps(originator, PROTOCOL)
    except Exception:
        originator = describe_originator(originator)
    try:
        pickle.dumps(data, PROTOCOL)
    except Exception:
        try:
            data = _DillValue(bytes(dill.dumps(data, protocol=PROTOCOL, recurse=True)))
        except BaseException as exc:
            raise SerializationError(
                f"event data of type {type(data).__qualname__} cannot be serialized for the "
                f"worker process: {type(exc).__name__}: {exc}"
            ) from exc
    return (seq, handler_id, originator, data, timestamp)


def encode_events(
    items: list[WireEvent],
) -> tuple[bytes, list[WireEvent], list[tuple[int, SerializationError]]]:
    """Pickle a batch of events as one blob.

    Returns the blob, the events it holds, and ``(seq, error)`` for each event that could not
    be serialized (left out of the blob). The common case costs one ``pickle.dumps``.
    """
    try:
        return pickle.dumps(items, PROTOCOL), items, []
    except Exception:
        pass
    kept: list[WireEvent] = []
    failed: list[tuple[int, SerializationError]] = []
    for item in items:
        try:
            kept.append(_repair(item))
        except SerializationError as exc:
            failed.append((item[0], exc))
    return pickle.dumps(kept, PROTOCOL), kept, failed


def encode_single_events(
    items: Iterable[WireEvent],
) -> tuple[bytes, list[WireEvent], list[tuple[int, SerializationError]]]:
    """Pickle events one by one, so that one that fails to unpickle in the worker fails alone.

    The blob is a pickled list of ``(seq, pickled event)``; returns it, the events it holds,
    and ``(seq, error)`` for each event that could not be serialized, as ``encode_events``.
    """
    singles: list[tuple[int, bytes]] = []
    kept: list[WireEvent] = []
    failed: list[tuple[int, SerializationError]] = []
    for item in items:
        try:
            repaired = _repair(item)
            singles.append((item[0], pickle.dumps(repaired, PROTOCOL)))
        except SerializationError as exc:
            failed.append((item[0], exc))
            continue
        kept.append(repaired)
    return pickle.dumps(singles, PROTOCOL), kept, failed


def dump_exception(exc: BaseException) -> tuple[bytes, str, str, str]:
    """Prepare a handler's exception for the trip to the parent.

    Returns ``(pickled exception or b"", type name, message, formatted traceback)``. The
    exception is pickled only if it also unpickles: an exception whose ``__init__`` takes
    several arguments pickles fine and fails only when loaded.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if type(exc).__module__ == "builtins":
        type_name = type(exc).__qualname__
    try:
        message = str(exc)
    except Exception as str_exc:
        message = f"<str() of the exception failed: {str_exc!r}>"
    try:
        blob = pickle.dumps(exc, PROTOCOL)
        pickle.loads(blob)
    except Exception:
        blob = b""
    return blob, type_name, message, tb


def load_exception(blob: bytes, type_name: str, message: str, tb: str) -> BaseException:
    """Rebuild a worker's exception in the parent, with its traceback as ``__cause__``."""
    exc: BaseException
    try:
        exc = pickle.loads(blob) if blob else RemoteError(type_name, message, tb)
    except Exception:
        exc = RemoteError(type_name, message, tb)
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
