"""eventmp: event pipelines whose handlers run in worker processes.

Generators are polled in the parent by an :class:`EventDispatcher`; each :class:`Event` travels
to an :class:`EventProcessor` in a worker process, which runs the event's handler; failures come
back to the parent as error events ``data=(exception, original_event)``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actions import (
        CommandEventHandler,
        CountEventHandler,
        JsonEventHandler,
        MailEventHandler,
        ThrottleEventHandler,
        WebhookEventHandler,
    )
    from .dispatcher import DispatcherStats, EventDispatcher, default_start_method
    from .errors import (
        CommandFailedError,
        CommandTimeoutError,
        DispatcherStoppedError,
        EventAbandonedError,
        EventmpError,
        HandlerTimeoutError,
        PipelineError,
        RemoteError,
        RemoteTraceback,
        SerializationError,
        SubmitTimeoutError,
        TemplateError,
        WebhookError,
        WorkerCrashedError,
        WorkerStartError,
    )
    from .event import Event, EventGenerator
    from .handlers import (
        ChainEventHandler,
        EventHandler,
        ExecEventHandler,
        PrintEventHandler,
        StopEventHandler,
    )
    from .pipeline import load_pipeline
    from .processor import EventProcessor
    from .tail import FileTailGenerator, Rule

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here

# Every name loads on first use: a worker process imports only its own side (forked from a
# server that preloaded it, see eventmp.preload), the command starts that server before it
# imports the rest, and the log-watching parts import urllib, smtplib and the like.
_LAZY = {
    "DispatcherStats": "dispatcher",
    "EventDispatcher": "dispatcher",
    "default_start_method": "dispatcher",
    "CommandFailedError": "errors",
    "CommandTimeoutError": "errors",
    "DispatcherStoppedError": "errors",
    "EventAbandonedError": "errors",
    "EventmpError": "errors",
    "HandlerTimeoutError": "errors",
    "PipelineError": "errors",
    "RemoteError": "errors",
    "RemoteTraceback": "errors",
    "SerializationError": "errors",
    "SubmitTimeoutError": "errors",
    "TemplateError": "errors",
    "WebhookError": "errors",
    "WorkerCrashedError": "errors",
    "WorkerStartError": "errors",
    "Event": "event",
    "EventGenerator": "event",
    "ChainEventHandler": "handlers",
    "EventHandler": "handlers",
    "ExecEventHandler": "handlers",
    "PrintEventHandler": "handlers",
    "StopEventHandler": "handlers",
    "EventProcessor": "processor",
    "CommandEventHandler": "actions",
    "CountEventHandler": "actions",
    "JsonEventHandler": "actions",
    "MailEventHandler": "actions",
    "ThrottleEventHandler": "actions",
    "WebhookEventHandler": "actions",
    "FileTailGenerator": "tail",
    "Rule": "tail",
    "load_pipeline": "pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventmp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


__all__ = [
    "ChainEventHandler",
    "CommandEventHandler",
    "CommandFailedError",
    "CommandTimeoutError",
    "CountEventHandler",
    "DispatcherStats",
    "DispatcherStoppedError",
    "Event",
    "EventAbandonedError",
    "EventDispatcher",
    "EventGenerator",
    "EventHandler",
    "EventProcessor",
    "EventmpError",
    "ExecEventHandler",
    "FileTailGenerator",
    "HandlerTimeoutError",
    "JsonEventHandler",
    "MailEventHandler",
    "PipelineError",
    "PrintEventHandler",
    "RemoteError",
    "RemoteTraceback",
    "Rule",
    "SerializationError",
    "StopEventHandler",
    "SubmitTimeoutError",
    "TemplateError",
    "ThrottleEventHandler",
    "WebhookError",
    "WebhookEventHandler",
    "WorkerCrashedError",
    "WorkerStartError",
    "__version__",
    "default_start_method",
    "load_pipeline",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
