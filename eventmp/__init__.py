"""eventmp: event pipelines whose handlers run in worker processes.

Generators are polled in the parent by an :class:`EventDispatcher`; each :class:`Event` travels
to an :class:`EventProcessor` in a worker process, which runs the event's handler; failures come
back to the parent as error events ``data=(exception, original_event)``.
"""

from .dispatcher import DispatcherStats, EventDispatcher, default_start_method
from .errors import (
    DispatcherStoppedError,
    EventAbandonedError,
    EventmpError,
    HandlerTimeoutError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SubmitTimeoutError,
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
from .processor import EventProcessor

__version__ = "0.1.0"

__all__ = [
    "ChainEventHandler",
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
    "HandlerTimeoutError",
    "PrintEventHandler",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StopEventHandler",
    "SubmitTimeoutError",
    "WorkerCrashedError",
    "WorkerStartError",
    "__version__",
    "default_start_method",
]
