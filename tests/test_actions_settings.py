"""eventmp.actions.settings: each handler's settings are checked when it is built.

Through the handlers that run the checks: every number, duration and boolean is accepted as a
string, and a setting that cannot be right is a ValueError naming the handler and the setting.
"""

from __future__ import annotations

from typing import Any

import pytest

from eventmp import EventHandler, PrintEventHandler
from eventmp.actions import (
    CommandEventHandler,
    CountEventHandler,
    JsonEventHandler,
    MailEventHandler,
    ThrottleEventHandler,
    WebhookEventHandler,
)


def test_every_setting_accepted_as_a_string() -> None:
    """Numbers, durations and booleans given as strings are parsed when the handler is built."""
    assert CommandEventHandler("true", timeout="1m").timeout == 60.0
    webhook = WebhookEventHandler("http://x/", timeout="250ms", retries="2", backoff="0")
    assert (webhook.timeout, webhook.retries, webhook.backoff) == (0.25, 2, 0.0)
    mail = MailEventHandler("a@example.com", port="2525", timeout="5s", starttls="true")
    assert (mail.port, mail.timeout, mail.starttls) == (2525, 5.0, True)
    count = CountEventHandler("3", window="2m")
    assert (count.count, count.window) == (3, 120.0)
    throttle = ThrottleEventHandler("10", interval="1h")
    assert (throttle.limit, throttle.interval) == (10, 3600.0)


@pytest.mark.parametrize(
    ("cls", "settings", "setting"),
    [
        (JsonEventHandler, {"fields": 3}, "fields"),
        (JsonEventHandler, {"file": ""}, "file"),
        (JsonEventHandler, {"mode": "0999"}, "mode"),
        (JsonEventHandler, {"mode": 0o4755}, "mode"),
        (PrintEventHandler, {"mode": "rw-r-----"}, "mode"),
        (CommandEventHandler, {"argv": []}, "argv"),
        (CommandEventHandler, {"argv": "echo 'unbalanced"}, "argv"),
        (CommandEventHandler, {"argv": ["echo", "{line.upper}"]}, "argv[1]"),
        (CommandEventHandler, {"argv": "true", "timeout": "soon"}, "timeout"),
        (CommandEventHandler, {"argv": "true", "timeout": "0"}, "timeout"),
        (CommandEventHandler, {"argv": "true", "env": {"A=B": "1"}}, "env"),
        (CommandEventHandler, {"argv": ["echo", "a\x00b"]}, "argv[1]"),
        (CommandEventHandler, {"argv": "true", "env_fields": 3}, "env_fields"),
        (
            CommandEventHandler,
            {"argv": "true", "options_from_fields": "maybe"},
            "options_from_fields",
        ),
        (WebhookEventHandler, {"url": "ftp://example.com/"}, "url"),
        (WebhookEventHandler, {"url": "http://x/{"}, "url"),
        (WebhookEventHandler, {"url": "http://x/", "retries": "-1"}, "retries"),
        (WebhookEventHandler, {"url": "http://x/", "retries": "three"}, "retries"),
        (WebhookEventHandler, {"url": "http://x/", "backoff": "x"}, "backoff"),
        (WebhookEventHandler, {"url": "http://x/", "headers": {"X": "a\nb"}}, "headers"),
        (WebhookEventHandler, {"url": "http://x/", "method": "PO ST"}, "method"),
        (MailEventHandler, {"to": ""}, "to"),
        (MailEventHandler, {"to": "a@example.com", "port": "70000"}, "port"),
        (MailEventHandler, {"to": "a@example.com", "starttls": "maybe"}, "starttls"),
        (MailEventHandler, {"to": "a@example.com", "subject": "{rule"}, "subject"),
        (MailEventHandler, {"to": "a@example.com", "username": "u"}, "password"),
        (CountEventHandler, {"count": "0"}, "count"),
        (CountEventHandler, {"count": True}, "count"),
        (CountEventHandler, {"count": 2, "window": "-1"}, "window"),
        (CountEventHandler, {"count": 2, "key": "{ip[0]}"}, "key"),
        (CountEventHandler, {"count": 2, "clock": "monotonic"}, "clock"),
        (ThrottleEventHandler, {"limit": "1.5"}, "limit"),
        (ThrottleEventHandler, {"limit": 1, "interval": "forever"}, "interval"),
        (CountEventHandler, {"count": 2, "max_keys": "0"}, "max_keys"),
        (ThrottleEventHandler, {"limit": 1, "max_keys": "many"}, "max_keys"),
    ],
)
def test_bad_setting_is_a_value_error_naming_it(
    cls: type[EventHandler], settings: dict[str, Any], setting: str
) -> None:
    """A setting that cannot be right fails when the handler is built, naming the setting."""
    with pytest.raises(ValueError) as caught:
        cls(**settings)
    assert f"setting {setting!r}" in str(caught.value)
    assert cls.__name__ in str(caught.value)
