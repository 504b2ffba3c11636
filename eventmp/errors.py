"""Every exception eventmp raises or reports, under one root: :class:`EventmpError`.

Errors that describe what happened to one event (:class:`WorkerCrashedError`,
:class:`HandlerTimeoutError`, :class:`EventAbandonedError`, :class:`SerializationError`,
:class:`RemoteError`) reach the error handler as ``event.data[0]`` of an error event; the others
are raised to the caller.
"""

from __future__ import annotations

import signal

__all__ = [
    "DispatcherStoppedError",
    "EventAbandonedError",
    "EventmpError",
    "HandlerTimeoutError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SubmitTimeoutError",
    "WorkerCrashedError",
    "WorkerStartError",
]


class EventmpError(Exception):
    """The root of every exception that eventmp itself raises or reports."""


class SerializationError(EventmpError):
    """An event, its handler or its data could not be serialized for the worker process.

    Raised in the parent when the event is dispatched and reported for that one event only.
    """


class RemoteError(EventmpError):
    """Stands in for a handler's exception that could not travel back from the worker.

    It happens to exceptions that do not survive pickling: an ``__init__`` with several required
    arguments, an unpicklable attribute. ``type_name`` is the qualified name of the original
    type, ``message`` its ``str()``, ``traceback`` the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback; attached as ``__cause__`` of a remote error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGSEGV: "a segmentation fault: a bug in C code or an extension module the handler "
    "called, or a stack overflow from deep recursion",
    signal.SIGKILL: "most often the kernel's out-of-memory killer (check "
    "`dmesg`), a memory limit of its cgroup, or someone running `kill -9`",
    signal.SIGABRT: "the process aborted: a failed assertion in C code or a fatal error in the "
    "interpreter",
    signal.SIGBUS: "a bus error: memory-mapped file truncated under the handler, or bad memory "
    "access in C code",
    signal.SIGFPE: "an arithmetic fault in C code",
    signal.SIGILL: "an illegal instruction: a binary built for another CPU",
    signal.SIGTERM: "a SIGTERM from outside eventmp",
}


def describe_exit(exitcode: int | None) -> str:
    """Say in words how a worker process ended and what probably caused it."""
    if exitcode is None:
        return "the worker is still running"
    if exitcode < 0:
        hint = _SIGNAL_HINTS.get(-exitcode)
        return f"killed by {_signal_name(-exitcode)}" + (f" ({hint})" if hint else "")
    if exitcode == 0:
        return "exited with status 0 while holding the event"
    return (
        f"exited with status {exitcode} (the handler or a library it called ended the "
        f"process, e.g. os._exit({exitcode}))"
    )


class WorkerCrashedError(EventmpError):
    """The worker process died while it held this event.

    ``exitcode`` is as :mod:`multiprocessing` reports it: the exit status, or the negative
    number of the signal that killed the process. ``pid`` is the dead worker's process id.
    """

    def __init__(self, exitcode: int | None, pid: int | None) -> None:
        super().__init__(exitcode, pid)
        self.exitcode = exitcode
        self.pid = pid

    def __str__(self) -> str:
        return f"worker process {self.pid} {describe_exit(self.exitcode)}"


class HandlerTimeoutError(EventmpError, TimeoutError):
    """The handler ran longer than ``event_timeout``; its worker was killed and replaced."""

    def __init__(self, timeout: float, pid: int | None = None) -> None:
        super().__init__(timeout, pid)
        self.timeout = timeout
        self.pid = pid

    def __str__(self) -> str:
        return (
            f"handler ran longer than event_timeout={self.timeout:g}s; "
            f"worker process {self.pid} was killed"
        )


class EventAbandonedError(EventmpError):
    """The event was accepted but never ran: the dispatcher was stopped without draining it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"event abandoned: {self.reason}"


class WorkerStartError(EventmpError):
    """A worker process could not start (an import error under spawn, say).

    Raised by ``start()``; a worker that fails to start is not restarted in a loop.
    """


class DispatcherStoppedError(EventmpError):
    """An event was submitted to a dispatcher that is stopped or stopping."""


class SubmitTimeoutError(EventmpError, TimeoutError):
    """``submit(event, timeout=...)`` gave up waiting for room in a full pipeline."""
