"""Built-in action handlers: what a rule does with a match.

- :class:`JsonEventHandler` (``json``): append one JSON object per event to a file or stream.
- :class:`CommandEventHandler` (``command``): run a program, never through a shell.
- :class:`WebhookEventHandler` (``webhook``): HTTP POST of the event as JSON, with retries.
- :class:`MailEventHandler` (``mail``): send a mail over SMTP.
- :class:`CountEventHandler` (``count``) and :class:`ThrottleEventHandler` (``throttle``): the
  suppression links of a chain, which return false to stop it.

:data:`BUILTIN_HANDLERS` maps the short names a pipeline file uses to these classes (and to
``print`` and ``exec`` from :mod:`eventmp.handlers`).

Each handler has a module of its own, with its helpers: :mod:`~eventmp.actions.jsonfile` (with
:func:`event_record`, the object ``json`` writes and ``webhook`` posts),
:mod:`~eventmp.actions.command`, :mod:`~eventmp.actions.webhook`, :mod:`~eventmp.actions.mail`
and :mod:`~eventmp.actions.suppression` (``count`` and ``throttle``); the checks they all run on
their settings are in :mod:`~eventmp.actions.settings`. Every name is importable from here.

Every handler is built in the parent and runs in a worker process. So every setting is accepted
as a string too (``"30s"``, ``"3"``, ``"true"``) and checked when the handler is built, with a
``ValueError`` that names the setting; templates are checked then as well (see
:mod:`eventmp.templates`). What cannot travel to a worker (an open file) is opened there on first
use and left behind by ``__getstate__``. The worker keeps one instance of each handler across
events, which is what gives ``count`` and ``throttle`` their memory: per worker process.
"""

from __future__ import annotations

from ..handlers import ExecEventHandler, PrintEventHandler
from .command import ENV_TOTAL_MAX as ENV_TOTAL_MAX
from .command import ENV_VALUE_MAX as ENV_VALUE_MAX
from .command import CommandEventHandler
from .jsonfile import JsonEventHandler, event_record
from .mail import MailEventHandler
from .suppression import EVICTION_LOG_INTERVAL as EVICTION_LOG_INTERVAL
from .suppression import MAX_KEYS as MAX_KEYS
from .suppression import CountEventHandler, ThrottleEventHandler
from .webhook import WebhookEventHandler

# eventmp.trial (``eventmp test``) shows each field of a webhook URL as the webhook encodes it.
from .webhook import quote_component as quote_component

__all__ = [
    "BUILTIN_HANDLERS",
    "CommandEventHandler",
    "CountEventHandler",
    "JsonEventHandler",
    "MailEventHandler",
    "ThrottleEventHandler",
    "WebhookEventHandler",
    "event_record",
]


BUILTIN_HANDLERS: dict[str, type] = {
    "print": PrintEventHandler,
    "exec": ExecEventHandler,
    "json": JsonEventHandler,
    "command": CommandEventHandler,
    "webhook": WebhookEventHandler,
    "mail": MailEventHandler,
    "count": CountEventHandler,
    "throttle": ThrottleEventHandler,
}
"""The handlers a pipeline file can name by a short name."""
