"""Every exception eventmp raises or reports, under one root: :class:`EventmpError`.

Errors that describe what happened to one event (:class:`WorkerCrashedError`,
:class:`HandlerTimeoutError`, :class:`EventAbandonedError`, :class:`SerializationError`,
:class:`RemoteError`, and the built-in handlers' :class:`TemplateError`,
:class:`CommandFailedError`, :class:`CommandTimeoutError`, :class:`WebhookError`) reach the error
handler as ``event.data[0]`` of an error event; the others are raised to the caller.
"""

from __future__ import annotations

import signal

__all__ = [
    "CommandFailedError",
    "CommandTimeoutError",
    "DispatcherStoppedError",
    "EventAbandonedError",
    "EventmpError",
    "HandlerTimeoutError",
    "LedgerError",
    "PipelineError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SubmitTimeoutError",
    "TemplateError",
    "WebhookError",
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


class LedgerError(EventmpError):
    """The dispatcher tried to settle an event against the evidence: a bug in eventmp.

    Settling an event twice, or on word from a worker that never held it, would count an
    event that never ran or run one twice. Raised when ``EVENTMP_STRICT_LEDGER=1`` (as in
    eventmp's own tests); otherwise logged as an error and the transition refused.
    """


class PipelineError(EventmpError):
    """A pipeline file is wrong: the message names the file, the key, and what was expected."""


class DispatcherStoppedError(EventmpError):
    """An event was submitted to a dispatcher that is stopped or stopping."""


class SubmitTimeoutError(EventmpError, TimeoutError):
    """``submit(event, timeout=...)`` gave up waiting for room in a full pipeline."""


class TemplateError(EventmpError):
    """A template could not be filled from an event: a field it names is missing, or a value
    does not take the format spec the template gives it.

    ``field`` is the field's name, ``available`` the names the event did offer (sorted),
    ``template`` the template, ``reason`` set when the field was there but could not be
    formatted.
    """

    def __init__(
        self,
        field: str,
        available: list[str] | tuple[str, ...] = (),
        template: str = "",
        reason: str = "",
    ) -> None:
        super().__init__(field, list(available), template, reason)
        self.field = field
        self.available = list(available)
        self.template = template
        self.reason = reason

    def __str__(self) -> str:
        where = f"template {self.template!r}: " if self.template else ""
        if self.reason:
            return f"{where}field {{{self.field}}}: {self.reason}"
        offered = ", ".join(self.available) if self.available else "none"
        return f"{where}the event has no field {{{self.field}}}; available: {offered}"


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class CommandFailedError(EventmpError):
    """A command run by ``CommandEventHandler`` exited with a non-zero status.

    ``argv`` is the argument list it ran, ``returncode`` its exit status (negative: the number
    of the signal that killed it), ``stderr`` the tail of what it wrote to its standard error.
    """

    def __init__(self, argv: list[str], returncode: int, stderr: str = "") -> None:
        super().__init__(argv, returncode, stderr)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr

    def __str__(self) -> str:
        if self.returncode < 0:
            how = f"was killed by {_signal_name(-self.returncode)}"
        else:
            how = f"exited with status {self.returncode}"
        text = f"command {self.argv!r} {how}"
        tail = _tail(self.stderr)
        return f"{text}; stderr ends with:\n{tail}" if tail else text


class CommandTimeoutError(EventmpError, TimeoutError):
    """A command run by ``CommandEventHandler`` ran longer than its ``timeout`` and was killed.

    ``argv`` is the argument list it ran, ``timeout`` the limit in seconds, ``stderr`` the tail
    of what it wrote to its standard error before it was killed.
    """

    def __init__(self, argv: list[str], timeout: float, stderr: str = "") -> None:
        super().__init__(argv, timeout, stderr)
        self.argv = list(argv)
        self.timeout = timeout
        self.stderr = stderr

    def __str__(self) -> str:
        text = f"command {self.argv!r} ran longer than timeout={self.timeout:g}s and was killed"
        tail = _tail(self.stderr)
        return f"{text}; stderr ends with:\n{tail}" if tail else text


class WebhookError(EventmpError):
    """``WebhookEventHandler`` gave up on a request.

    ``url`` is the URL's scheme, host and port (its userinfo, path and query shown as ``***``:
    they may hold a token), ``status`` the HTTP status of
    the last answer (None when there was none: a connection error or a timeout), ``attempts``
    how many requests were made, ``reason`` what went wrong the last time.
    """

    def __init__(self, url: str, status: int | None, attempts: int, reason: str = "") -> None:
        super().__init__(url, status, attempts, reason)
        self.url = url
        self.status = status
        self.attempts = attempts
        self.reason = reason

    def __str__(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else "no answer"
        if self.reason:
            what = f"{what} ({self.reason})"
        tries = "attempt" if self.attempts == 1 else "attempts"
        return f"webhook {self.url} failed after {self.attempts} {tries}: {what}"
