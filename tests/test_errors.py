"""eventmp.errors: every exception under one root, readable, and able to cross processes."""

from __future__ import annotations

import inspect
import pickle
import signal

import dill
import pytest

import eventmp
from eventmp import errors
from eventmp.errors import (
    CommandFailedError,
    CommandTimeoutError,
    DispatcherStoppedError,
    EventAbandonedError,
    EventmpError,
    HandlerTimeoutError,
    LedgerError,
    PipelineError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SubmitTimeoutError,
    TemplateError,
    WebhookError,
    WorkerCrashedError,
    WorkerStartError,
    describe_exit,
)

ERROR_CLASSES = [
    obj
    for _name, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]

# One instance of every exception class, with the attributes that must survive a round trip.
SAMPLES: list[tuple[BaseException, dict[str, object]]] = [
    (EventmpError("root"), {"args": ("root",)}),
    (SerializationError("cannot pickle"), {"args": ("cannot pickle",)}),
    (
        RemoteError("mod.Custom", "it broke", "Traceback...\n"),
        {"type_name": "mod.Custom", "message": "it broke", "traceback": "Traceback...\n"},
    ),
    (
        RemoteTraceback("Traceback (most recent call last):\n"),
        {"tb": "Traceback (most recent call last):\n"},
    ),
    (WorkerCrashedError(-signal.SIGKILL, 4242), {"exitcode": -signal.SIGKILL, "pid": 4242}),
    (WorkerCrashedError(3, None), {"exitcode": 3, "pid": None}),
    (HandlerTimeoutError(2.5, 77), {"timeout": 2.5, "pid": 77}),
    (HandlerTimeoutError(0.25), {"timeout": 0.25, "pid": None}),
    (EventAbandonedError("stop(drain=False)"), {"reason": "stop(drain=False)"}),
    (WorkerStartError("import failed"), {"args": ("import failed",)}),
    (DispatcherStoppedError("stopped"), {"args": ("stopped",)}),
    (SubmitTimeoutError("no room"), {"args": ("no room",)}),
    (
        TemplateError("host", ["ip", "line"], "{host}"),
        {"field": "host", "available": ["ip", "line"], "template": "{host}"},
    ),
    (
        CommandFailedError(["notify", "x"], 3, "boom"),
        {"argv": ["notify", "x"], "returncode": 3, "stderr": "boom"},
    ),
    (CommandTimeoutError(["sleep", "9"], 2.5), {"argv": ["sleep", "9"], "timeout": 2.5}),
    (
        WebhookError("http://x/", 503, 4, "Service Unavailable"),
        {"url": "http://x/", "status": 503, "attempts": 4},
    ),
    (PipelineError("pipeline.toml: rules[1].regex: bad"), {}),
    (LedgerError("event 7 settled twice"), {"args": ("event 7 settled twice",)}),
]


def test_every_error_class_is_sampled() -> None:
    """The round-trip samples cover every exception class that errors.py defines."""
    assert {type(exc) for exc, _ in SAMPLES} == set(ERROR_CLASSES)


# RemoteTraceback only carries the worker's traceback text as a __cause__ (like
# concurrent.futures' _RemoteTraceback): it is never raised on its own, so it is not an
# EventmpError.
@pytest.mark.parametrize(
    "cls", [c for c in ERROR_CLASSES if c is not RemoteTraceback], ids=lambda c: c.__name__
)
def test_every_error_derives_from_eventmp_error(cls: type[BaseException]) -> None:
    """Every exception eventmp raises or reports can be caught with `except EventmpError`."""
    assert issubclass(cls, EventmpError)


def test_remote_traceback_is_an_exception_carrier() -> None:
    """RemoteTraceback is an Exception whose str() is the traceback text it carries."""
    tb = RemoteTraceback('\n"""\nTraceback (most recent call last):\n  File "x"\n"""')
    assert isinstance(tb, Exception)
    assert str(tb) == tb.tb


def test_eventmp_error_is_an_exception() -> None:
    """The root is an ordinary Exception, so generic handlers catch it too."""
    assert issubclass(EventmpError, Exception)


@pytest.mark.parametrize(
    "name",
    [
        "EventmpError",
        "SerializationError",
        "RemoteError",
        "WorkerCrashedError",
        "HandlerTimeoutError",
        "EventAbandonedError",
    ],
)
def test_errors_are_importable_from_the_package(name: str) -> None:
    """The errors the issue names are importable from `eventmp` itself."""
    assert getattr(eventmp, name) is getattr(errors, name)


def test_handler_timeout_is_a_timeout_error_with_timeout() -> None:
    """HandlerTimeoutError is also a TimeoutError and carries the timeout and the pid."""
    exc = HandlerTimeoutError(1.5, 99)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, EventmpError)
    assert exc.timeout == 1.5
    assert exc.pid == 99
    with pytest.raises(TimeoutError):
        raise exc


def test_handler_timeout_message_gives_timeout_and_pid() -> None:
    """HandlerTimeoutError's message states the timeout and the killed worker's pid."""
    text = str(HandlerTimeoutError(1.5, 99))
    assert "1.5" in text
    assert "99" in text


def test_submit_timeout_is_a_timeout_error() -> None:
    """SubmitTimeoutError is both an EventmpError and a TimeoutError."""
    assert issubclass(SubmitTimeoutError, TimeoutError)
    assert issubclass(SubmitTimeoutError, EventmpError)


def test_worker_crashed_by_sigsegv_names_signal_and_hints() -> None:
    """A worker killed by SIGSEGV is described by the signal's name and a likely cause."""
    exc = WorkerCrashedError(-signal.SIGSEGV, 1234)
    text = str(exc)
    assert "SIGSEGV" in text
    assert "segmentation fault" in text
    assert "1234" in text
    assert exc.exitcode == -signal.SIGSEGV
    assert exc.pid == 1234


def test_worker_crashed_by_sigkill_names_signal_and_hints_oom() -> None:
    """A worker killed by SIGKILL is described by the signal's name and the OOM-killer hint."""
    text = str(WorkerCrashedError(-signal.SIGKILL, 1234))
    assert "SIGKILL" in text
    assert "out-of-memory" in text


@pytest.mark.parametrize("code", [1, 3, 75, 255])
def test_worker_crashed_with_exit_status(code: int) -> None:
    """A worker that exited with a positive status is described by that status."""
    text = str(WorkerCrashedError(code, 1234))
    assert f"status {code}" in text
    assert "killed" not in text


def test_worker_crashed_with_status_zero_is_still_a_crash() -> None:
    """A worker that exited 0 while holding an event is described as such."""
    assert "status 0" in str(WorkerCrashedError(0, 5))


def test_worker_crashed_describes_every_signal() -> None:
    """Every signal that can kill a worker, real-time ones included, gets a readable message."""
    unreadable: dict[int, str] = {}
    for signum in sorted(int(s) for s in signal.valid_signals()):
        try:
            text = str(WorkerCrashedError(-signum, 1234))
        except Exception as exc:
            unreadable[signum] = repr(exc)
            continue
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        if not text.startswith(f"worker process 1234 killed by {name}"):
            unreadable[signum] = text
    assert unreadable == {}


def test_describe_exit_of_unknown_signal_number() -> None:
    """A signal number that the platform does not know is still described by its number."""
    assert describe_exit(-200) == "killed by signal 200"


def test_describe_exit_of_running_worker() -> None:
    """An exit code of None means the worker has not exited."""
    assert "still running" in describe_exit(None)


def test_remote_error_keeps_type_message_and_traceback() -> None:
    """RemoteError keeps the original type name, message and traceback; str() shows type: msg."""
    exc = RemoteError("app.handlers.QuotaError", "over quota", "Traceback...\n")
    assert exc.type_name == "app.handlers.QuotaError"
    assert exc.message == "over quota"
    assert exc.traceback == "Traceback...\n"
    assert str(exc) == "app.handlers.QuotaError: over quota"


def test_remote_error_traceback_defaults_to_empty() -> None:
    """A RemoteError built without a traceback has an empty one."""
    assert RemoteError("T", "m").traceback == ""


def test_abandoned_error_names_its_reason() -> None:
    """EventAbandonedError's message says why the event was abandoned."""
    exc = EventAbandonedError("stop(drain=False) was called")
    assert exc.reason == "stop(drain=False) was called"
    assert "stop(drain=False) was called" in str(exc)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s[0]).__name__)
@pytest.mark.parametrize("module", [pickle, dill], ids=["pickle", "dill"])
def test_every_error_survives_a_round_trip(
    sample: tuple[BaseException, dict[str, object]], module: object
) -> None:
    """Every error crosses a pickle (and dill) round trip with its type, attributes and message."""
    exc, attributes = sample
    loaded = module.loads(module.dumps(exc))  # type: ignore[attr-defined]
    assert type(loaded) is type(exc)
    for name, value in attributes.items():
        assert getattr(loaded, name) == value, name
    assert str(loaded) == str(exc)
