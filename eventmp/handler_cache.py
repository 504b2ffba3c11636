"""The handler cache: each handler serialized with dill once, then sent by id.

Runs in the parent process, under the dispatcher's lock; no I/O. dill costs far more than
pickle, and most events of a pipeline share a few handlers, so a handler travels to each worker
once (in a :class:`~eventmp.messages.HandlerUpdate`) and events name it by id. The cache is
keyed by identity (a bound method by its object and function, since each attribute access
builds a new one) and bounded, so handlers built per event do not grow it without end; an
evicted handler's id is returned for the dispatcher to tell the workers that know it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from . import serialization
from .errors import EventmpError, SerializationError
from .messages import STOP_HANDLER_ID

__all__ = ["HANDLER_CACHE_SIZE", "HandlerCache", "handler_key"]

# Handlers kept serialized; more distinct ones than this are usually built per event.
HANDLER_CACHE_SIZE = 1024


def handler_key(handler: Any) -> Any:
    """The identity a handler is cached by: a bound method's object and function."""
    self_obj = getattr(handler, "__self__", None)
    func = getattr(handler, "__func__", None)
    if self_obj is not None and func is not None:
        return ("method", id(self_obj), id(func))
    return id(handler)


class HandlerCache:
    """Handler ids and their dill bytes, least recently used first."""

    def __init__(self, size: int = HANDLER_CACHE_SIZE) -> None:
        self.size = size
        # key -> (id, the handler (kept alive, so its id() is not reused), bytes or the error)
        self._entries: OrderedDict[Any, tuple[int, Any, bytes | SerializationError]] = OrderedDict()
        self._next_id = STOP_HANDLER_ID + 1

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, handler: Any) -> tuple[int, bytes, int | None]:
        """``(id, dill bytes, evicted id or None)`` for ``handler``.

        Raises :class:`EventmpError` for a missing handler and :class:`SerializationError`
        (every time it is asked) for one dill cannot serialize.
        """
        if handler is None:
            raise EventmpError("the event has no handler")
        key = handler_key(handler)
        entries = self._entries
        entry = entries.get(key)
        evicted: int | None = None
        if entry is None:
            handler_id = self._next_id
            self._next_id += 1
            blob: bytes | SerializationError
            try:
                blob = serialization.dump_handler(handler)
            except SerializationError as exc:
                blob = exc
            entry = (handler_id, handler, blob)
            entries[key] = entry
            if len(entries) > self.size:
                _key, (evicted, _handler, _blob) = entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        handler_id, _handler, blob = entry
        if isinstance(blob, SerializationError):
            raise blob
        return handler_id, blob, evicted
