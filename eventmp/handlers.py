"""Event handlers: the base class, composition, and the handlers that ship with eventmp.

A handler is any object with ``process_event(event)``, or a plain callable taking the event. It
returns a true value on success. Handlers are built in the parent and run in a worker process,
so every setting is accepted as a string too (a pipeline file can build them) and file-like
settings are resolved in the worker, where they are used.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from types import CodeType
from typing import IO, Any

from .event import Event
from .redact import redact_settings
from .templates import Fields, check, printable, render_fields

__all__ = [
    "OUTPUT_MODE",
    "ChainEventHandler",
    "EventHandler",
    "ExecEventHandler",
    "PrintEventHandler",
    "StopEventHandler",
    "call_handler",
    "describe_handler",
    "file_mode",
    "open_output",
]

OUTPUT_MODE = 0o600
"""The permissions of an output file a handler creates, unless its ``mode`` says otherwise."""


def file_mode(owner: str, value: Any) -> int:
    """A ``mode`` setting as permission bits: ``"0640"``, ``"640"``, ``"0o640"`` or 0o640.

    Raises ``ValueError`` naming ``owner`` and the setting for anything else, or for bits
    beyond 0o777 (no set-user-ID, set-group-ID or sticky bit on a log of events).
    """
    if value is None:
        return OUTPUT_MODE
    bits: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        bits = value
    elif isinstance(value, str) and re.fullmatch(r"(?:0o?)?[0-7]{1,4}", value.strip()):
        bits = int(value.strip().removeprefix("0o"), 8)
    if bits is None or not 0 <= bits <= 0o777:
        raise ValueError(
            f'{owner}: setting \'mode\': expected permissions in octal from "0000" to "0777" '
            f'(such as "0640"), got {value!r}'
        )
    return bits


def open_output(path: str, mode: int = OUTPUT_MODE) -> int:
    """Open ``path`` to append to, creating it with permissions ``mode``; return the descriptor.

    A file this call creates gets exactly ``mode`` (set with ``fchmod``, whatever the umask);
    an existing file keeps its own. A symbolic link at ``path`` is never followed
    (``O_NOFOLLOW``): the call raises ``OSError`` with ``ELOOP`` and says so. Links among the
    directories above ``path`` are followed.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        for _ in range(10):
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                try:
                    return os.open(path, flags)
                except FileNotFoundError:
                    continue  # removed between the two opens: create it after all
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                raise
            return fd
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(
                errno.ELOOP,
                "refusing to follow the symbolic link at the output path "
                "(remove it, or name the file it points to)",
                path,
            ) from None
        raise


def call_handler(handler: Any, event: Event) -> Any:
    """Run ``handler`` on ``event``: its ``process_event`` method, or the handler itself."""
    process = getattr(handler, "process_event", None)
    if process is not None:
        return process(event)
    if callable(handler):
        return handler(event)
    raise TypeError(
        f"{type(handler).__qualname__} object is not a handler: it has no process_event() "
        "and is not callable"
    )


def describe_handler(handler: Any) -> str:
    """Name a handler for humans, whatever it is."""
    if isinstance(handler, EventHandler):
        return str(handler)
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return str(name)


class EventHandler:
    """Base class for handlers: ``process_event(event)`` returns a true value on success."""

    def process_event(self, event: Event) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__}.process_event()")

    def settings(self) -> dict[str, Any]:
        """The handler's settings, as shown by ``str()``: its public attributes by default."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __str__(self) -> str:
        # Secrets (a URL's path and userinfo, env values, a password) show as ***.
        args = ", ".join(f"{k}={v!r}" for k, v in redact_settings(self.settings()).items())
        return f"{type(self).__name__}({args})"

    __repr__ = __str__


class ChainEventHandler(EventHandler):
    """Run handlers in order; stop at the first that returns a false value.

    Returns true only if every handler returned true, so chains nest.
    """

    def __init__(self, *handlers: Any) -> None:
        if len(handlers) == 1 and isinstance(handlers[0], (list, tuple)):
            handlers = tuple(handlers[0])
        for handler in handlers:
            if not (hasattr(handler, "process_event") or callable(handler)):
                raise TypeError(f"not a handler: {handler!r}")
        self.handlers = list(handlers)

    def process_event(self, event: Event) -> bool:
        return all(call_handler(handler, event) for handler in self.handlers)

    def __str__(self) -> str:
        return "ChainEventHandler(" + ", ".join(describe_handler(h) for h in self.handlers) + ")"


class ExecEventHandler(EventHandler):
    """Execute the Python source ``command`` with ``event`` bound in its namespace.

    The source is compiled when the handler is built, so a syntax error surfaces in the parent.
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self._code: CodeType | None = compile(command, f"<{type(self).__name__}>", "exec")

    def process_event(self, event: Event) -> bool:
        if self._code is None:
            self._code = compile(self.command, f"<{type(self).__name__}>", "exec")
        exec(self._code, {"event": event, "__name__": "__eventmp_exec__"})
        return True

    def __getstate__(self) -> dict[str, Any]:
        # Code objects do not pickle; the worker compiles the source once on first use.
        return dict(vars(self), _code=None)


class StopEventHandler(ExecEventHandler):
    """The poison pill's handler: ``EventDispatcher.stop()`` sends one behind every event.

    On the wire the pill is handler id 0, which every worker knows without being sent it; the
    worker leaves its loop when it reaches it, after every event before it. An event a user
    submits with a ``StopEventHandler`` of its own is an ordinary event: it runs (doing
    nothing, returning true) and stops nothing, so no event queued behind it is stranded.
    """

    def __init__(self) -> None:
        super().__init__("pass")

    def process_event(self, event: Event) -> bool:
        return True


_STREAMS = ("stdout", "stderr")


class PrintEventHandler(EventHandler):
    """Write ``str(event)``, or ``format`` filled from the event, and a newline, then flush.

    ``file`` is a file object, ``"stdout"``, ``"stderr"`` (the worker's own streams, inherited
    from the parent), or a path, opened for append in the worker on first use with
    :func:`open_output`: created with permissions ``mode`` (default ``0o600``; ``"0640"``
    works too), and never through a symbolic link planted at the path. ``None`` means
    ``"stdout"``.

    ``format`` is a template (see :mod:`eventmp.templates`), such as ``"{time} {ip} {user}"``,
    checked when the handler is built. The fields' text is escaped with
    :func:`~eventmp.templates.printable` (a newline shows as ``\\n``, an escape character as
    ``\\x1b``), so one event is always one line, whatever the log line held; the template's
    own text is written as it is.
    """

    def __init__(
        self,
        file: IO[str] | str | os.PathLike[str] | None = None,
        format: str | None = None,
        mode: int | str | None = None,
    ) -> None:
        self.file: IO[str] | str = _stream_name(file)
        self.format = format
        self._mode = file_mode(type(self).__name__, mode)
        if format is not None:
            if not isinstance(format, str) or not format:
                raise ValueError(
                    f"{type(self).__name__}: setting 'format': expected a non-empty template "
                    f"string, got {format!r}"
                )
            try:
                check(format)
            except ValueError as exc:
                raise ValueError(f"{type(self).__name__}: setting 'format': {exc}") from None
        self._opened: IO[str] | None = None

    def _target(self) -> IO[str]:
        if not isinstance(self.file, str):
            return self.file
        if self.file in _STREAMS:
            stream: IO[str] = getattr(sys, self.file)
            return stream
        if self._opened is None:
            fd = open_output(self.file, self._mode)
            self._opened = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        return self._opened

    def process_event(self, event: Event) -> bool:
        if self.format is None:
            text = str(event)
        else:
            text = render_fields(self.format, Fields(event), escape=printable)
        out = self._target()
        out.write(f"{text}\n")
        out.flush()
        return True

    def settings(self) -> dict[str, Any]:
        file = self.file if isinstance(self.file, str) else getattr(self.file, "name", self.file)
        shown: dict[str, Any] = {"file": file}
        if self.format is not None:
            shown["format"] = self.format
        if self._mode != OUTPUT_MODE:
            shown["mode"] = f"{self._mode:04o}"
        return shown

    def __getstate__(self) -> dict[str, Any]:
        # An open file does not travel to another process; its name does.
        state = dict(vars(self))
        state["_opened"] = None
        if not isinstance(self.file, str):
            name = getattr(self.file, "name", None)
            if isinstance(name, str) and not name.startswith("<"):
                state["file"] = name
        return state

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None


def _stream_name(file: IO[str] | str | os.PathLike[str] | None) -> IO[str] | str:
    if file is None:
        return "stdout"
    if isinstance(file, os.PathLike):
        return os.fspath(file)
    if isinstance(file, str):
        return file
    for name in _STREAMS:
        if file is getattr(sys, name) or file is getattr(sys, f"__{name}__"):
            return name
    return file


HandlerLike = EventHandler | Callable[[Event], Any]
