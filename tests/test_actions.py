"""eventmp.actions: the registry of built-in handlers, and handlers together in real workers.

Each handler's own tests are in the test module named after its module (test_actions_command.py
for eventmp/actions/command.py...). Here: the short names a pipeline file uses, print (a
built-in from eventmp.handlers) with a format, handlers chained and run in real worker
processes, and the secrets of several handlers at once.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, read_lines, tail_data, tail_event

from eventmp import ChainEventHandler, Event, EventHandler, ExecEventHandler, PrintEventHandler
from eventmp.actions import (
    BUILTIN_HANDLERS,
    CommandEventHandler,
    CountEventHandler,
    JsonEventHandler,
    MailEventHandler,
    ThrottleEventHandler,
    WebhookEventHandler,
)
from eventmp.errors import CommandFailedError, TemplateError
from eventmp.templates import fields
from eventmp.testing import run_events

# == registry ====================================================================================


def test_builtin_handlers_registry() -> None:
    """BUILTIN_HANDLERS maps each short name a pipeline file uses to its handler class."""
    registry = dict(BUILTIN_HANDLERS)
    assert registry == {
        "print": PrintEventHandler,
        "exec": ExecEventHandler,
        "json": JsonEventHandler,
        "command": CommandEventHandler,
        "webhook": WebhookEventHandler,
        "mail": MailEventHandler,
        "count": CountEventHandler,
        "throttle": ThrottleEventHandler,
    }
    assert all(issubclass(cls, EventHandler) for cls in BUILTIN_HANDLERS.values())


# == print with a format =========================================================================


def test_print_format_fills_the_template() -> None:
    """print with format writes the template filled from the event's fields, one line."""
    out = io.StringIO()
    event = tail_event()
    assert PrintEventHandler(out, format="{time} {ip} {user}").process_event(event) is True
    assert out.getvalue() == f"{fields(event)['time']} 203.0.113.9 root\n"


def test_print_without_format_writes_str_event() -> None:
    """Without format, print writes str(event) as before, and str() does not mention format."""
    out = io.StringIO()
    event = tail_event()
    PrintEventHandler(out).process_event(event)
    assert out.getvalue() == f"{event}\n"
    assert str(PrintEventHandler("stderr")) == "PrintEventHandler(file='stderr')"
    assert str(PrintEventHandler("stderr", format="{ip}")) == (
        "PrintEventHandler(file='stderr', format='{ip}')"
    )


def test_print_format_cannot_be_given_an_extra_line_by_the_log() -> None:
    """Line breaks and terminal control in a field are escaped: one event, one output line."""
    out = io.StringIO()
    forged = "x\n2026-11-29T17:03:57 ALERT forged\r\x1b[2K\u2028y"
    event = tail_event(line=forged, named={"user": "evil\nroot", "ip": "1.2.3.4"})
    handler = PrintEventHandler(out, format="{user}@{ip}: {line}")
    handler.process_event(event)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert len(text.splitlines()) == 1, "no character any splitlines() knows as a line break"
    assert text == (
        "evil\\nroot@1.2.3.4: x\\n2026-11-29T17:03:57 ALERT forged\\r\\x1b[2K\\u2028y\n"
    )


def test_print_format_keeps_the_templates_own_line_breaks() -> None:
    """The pipeline's author may break the output over lines; only the fields are escaped."""
    out = io.StringIO()
    PrintEventHandler(out, format="{rule}:\n\t{line}").process_event(tail_event(line="a\tb"))
    assert out.getvalue() == "ssh-failure:\n\ta\\tb\n"


@pytest.mark.parametrize("bad", ["{ip", "{ip.__class__}", "{}", "", 3])
def test_print_bad_format_is_a_value_error_naming_it(bad: Any) -> None:
    """A format that is not a valid template fails when print is built, naming the setting."""
    with pytest.raises(ValueError, match=r"PrintEventHandler: setting 'format'"):
        PrintEventHandler(format=bad)


def test_print_format_missing_field_is_a_template_error() -> None:
    """A field the event lacks fails the event with a TemplateError naming it."""
    with pytest.raises(TemplateError, match=r"no field \{host\}"):
        PrintEventHandler(io.StringIO(), format="{host}").process_event(tail_event())


def test_print_format_in_a_real_worker(tmp_path: Path, start_method: str) -> None:
    """print with a format travels to a worker and appends filled lines to its file."""
    out = tmp_path / "printed.txt"
    handler = PrintEventHandler(out, format="{line_number:>4} {user} from {ip}")
    events = [
        Event("tail", handler, tail_data(line_number=n, named={"user": u, "ip": "10.0.0.9"}))
        for n, u in [(1, "a"), (22, "b\x1b]0;pwned\x07")]
    ]
    assert run_events(events, timeout=WAIT, start_method=start_method, poll_interval=0.05) == []
    assert out.read_text(encoding="utf-8").splitlines() == [
        "   1 a from 10.0.0.9",
        "  22 b\\x1b]0;pwned\\x07 from 10.0.0.9",
    ]


# == end to end, in real workers =================================================================

APPEND_ARG = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
FAIL_3 = "import sys; sys.stderr.write('no such user: ' + sys.argv[1]); sys.exit(3)"


def test_json_and_command_in_a_real_worker(tmp_path: Path, start_method: str) -> None:
    """json and command handlers run in a worker; a failing command's CommandFailedError
    comes back to the parent as the error event's exception."""
    out = tmp_path / "events.jsonl"
    ran = tmp_path / "ran.txt"
    record = JsonEventHandler(out, fields=["rule", "ip"])
    notify = CommandEventHandler([sys.executable, "-c", APPEND_ARG, str(ran), "{ip}"])
    fail = CommandEventHandler([sys.executable, "-c", FAIL_3, "{user}"])
    good = ChainEventHandler(record, notify)
    bad = ChainEventHandler(record, fail)
    events = [
        Event("tail", good, tail_data(named={"ip": "10.0.0.1", "user": "a"})),
        Event("tail", bad, tail_data(named={"ip": "10.0.0.2", "user": "mallory"})),
        Event("tail", good, tail_data(named={"ip": "10.0.0.3", "user": "c"})),
    ]
    errors = run_events(events, timeout=WAIT, start_method=start_method, poll_interval=0.05)
    assert len(errors) == 1
    exception, failed = errors[0].data
    assert isinstance(exception, CommandFailedError)
    assert exception.returncode == 3
    assert exception.stderr == "no such user: mallory"
    assert failed.data["named"]["ip"] == "10.0.0.2"
    assert [line["ip"] for line in read_lines(out)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert ran.read_text().split() == ["10.0.0.1", "10.0.0.3"]


# == secrets =====================================================================================


def test_command_and_mail_str_hide_env_values_and_the_password() -> None:
    """A command's env values and a mail password show as *** (the variable names stay)."""
    command = CommandEventHandler(["true"], env={"API_KEY": "ENV-SECRET-789"})
    assert "ENV-SECRET-789" not in str(command)
    assert "env={'API_KEY': '***'}" in str(command)
    mail = MailEventHandler("ops@example.com", username="u", password="MAIL-PW-321")
    assert "MAIL-PW-321" not in str(mail) and "password='***'" in str(mail)
