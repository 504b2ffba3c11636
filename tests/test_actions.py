"""eventmp.actions: the built-in handlers, each against the real thing it talks to.

Webhooks go to an http.server on 127.0.0.1, mail to an aiosmtpd server on 127.0.0.1, commands
are real subprocesses, JSON goes to real files; count and throttle are driven by a clock the
test sets, and the end-to-end tests run handlers in real worker processes.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import errno
import io
import json
import math
import os
import pickle
import shlex
import signal
import smtplib
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dill
import psutil
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from eventmp import ChainEventHandler, Event, EventHandler, ExecEventHandler, PrintEventHandler
from eventmp.actions import (
    BUILTIN_HANDLERS,
    ENV_TOTAL_MAX,
    ENV_VALUE_MAX,
    CommandEventHandler,
    CountEventHandler,
    JsonEventHandler,
    MailEventHandler,
    ThrottleEventHandler,
    WebhookEventHandler,
    event_record,
)
from eventmp.errors import (
    CommandFailedError,
    CommandTimeoutError,
    EventmpError,
    TemplateError,
    WebhookError,
)
from eventmp.handlers import describe_handler
from eventmp.templates import fields
from eventmp.testing import RecordingHandler, run_events

STAMP = 1_700_000_000.5

# Generous upper bounds for waits: they only matter when something is broken.
WAIT = 30.0


def tail_data(
    line: str = "Failed password for root from 203.0.113.9 port 22", **changes: Any
) -> Any:
    """Event data shaped like the file tail's, for an sshd line that matched a rule."""
    data: dict[str, Any] = {
        "input": "auth",
        "file": "/var/log/auth.log",
        "line_number": 42,
        "line": line,
        "rule": "ssh-failure",
        "match": "for root from 203.0.113.9",
        "groups": ["root", "203.0.113.9"],
        "named": {"user": "root", "ip": "203.0.113.9"},
    }
    data.update(changes)
    return data


def tail_event(handler: Any = None, **changes: Any) -> Event:
    """An event shaped like the file tail's, with a fixed timestamp."""
    return Event("tail", handler, tail_data(**changes), timestamp=STAMP)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class FakeClock:
    """A clock the test moves by hand, standing in for time.monotonic."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep proxy settings of the environment away from requests to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# == HTTP server for webhooks ====================================================================


class HookServer:
    """An HTTP server on 127.0.0.1 that records requests and answers with given statuses.

    ``statuses`` are the answers to the first, second... request; the last one repeats. With
    ``hang``, it reads each request and never answers (until the test ends).
    """

    def __init__(self, statuses: list[int], hang: bool = False) -> None:
        self.statuses = statuses
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with hook.lock:
                    hook.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    number = len(hook.requests)
                if hook.hang:
                    hook.release.wait(WAIT)
                    self.close_connection = True
                    return
                status = hook.statuses[min(number, len(hook.statuses)) - 1]
                payload = b"" if status < 300 else f"answer {status}".encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def hook_server() -> Iterator[Callable[..., HookServer]]:
    """Start HookServers on demand; shut them all down after the test."""
    started: list[HookServer] = []

    def start(statuses: list[int] | None = None, hang: bool = False) -> HookServer:
        server = HookServer(statuses or [200], hang)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# == SMTP server for mail ========================================================================


class Inbox:
    """An aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        accepted = (login, password) == ("watcher", "s3cret")
        # handled=False: aiosmtpd itself answers a refusal with 535.
        return AuthResult(success=accepted, handled=False)

    def message(self, index: int = 0) -> email.message.EmailMessage:
        """The index-th mail received, parsed."""
        content = self.envelopes[index].original_content
        assert content is not None
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Inbox, int]]]:
    """Start aiosmtpd servers on 127.0.0.1 on demand; stop them all after the test."""
    controllers: list[Controller] = []

    def start(**options: Any) -> tuple[Inbox, int]:
        inbox = Inbox()
        if options.pop("auth", False):
            options.update(auth_require_tls=False, authenticator=inbox.authenticate)
        for _attempt in range(5):
            port = free_port()
            controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
            try:
                controller.start()
            except OSError:
                continue  # someone took the port between asking and binding
            controllers.append(controller)
            return inbox, port
        raise RuntimeError("no free port for the SMTP server")

    yield start
    for controller in controllers:
        controller.stop()


# == registry and settings =======================================================================


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


# == event_record ================================================================================


def test_event_record_default_keys() -> None:
    """The default record has the timestamp, ISO time, originator and the data whole."""
    record = event_record(tail_event())
    assert list(record) == ["timestamp", "time", "originator", "data"]
    assert record["timestamp"] == STAMP
    assert datetime.fromisoformat(record["time"]).timestamp() == STAMP
    assert record["originator"] == "tail"
    assert record["data"] == tail_data()


def test_event_record_with_field_names_missing_one() -> None:
    """Asking for a field the event lacks raises TemplateError, as a template would."""
    with pytest.raises(TemplateError, match="host"):
        event_record(tail_event(), ["line", "host"])


# == json ========================================================================================


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a file, parsed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_json_appends_one_object_per_event(tmp_path: Path) -> None:
    """Each event becomes one JSON line, appended to what the file already held."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    handler = JsonEventHandler(path)
    assert handler.process_event(tail_event()) is True
    assert handler.process_event(Event("app", None, 7, timestamp=STAMP + 1)) is True
    handler.close()
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}
    assert lines[1]["data"] == tail_data()
    assert lines[1]["originator"] == "tail"
    assert lines[2] == {
        "timestamp": STAMP + 1,
        "time": datetime.fromtimestamp(STAMP + 1).astimezone().isoformat(timespec="milliseconds"),
        "originator": "app",
        "data": 7,
    }


def test_json_with_fields_writes_only_those(tmp_path: Path) -> None:
    """With fields, each line holds those fields of the event, named groups included."""
    path = tmp_path / "events.jsonl"
    handler = JsonEventHandler(str(path), fields="time, rule, ip, 1")
    handler.process_event(tail_event())
    (line,) = read_lines(path)
    assert list(line) == ["time", "rule", "ip", "1"]
    assert line["ip"] == "203.0.113.9"
    assert line["1"] == "root"


def test_json_writes_unserializable_values_as_repr(tmp_path: Path) -> None:
    """Values JSON cannot hold are written as their repr(), and the line is still valid JSON."""
    path = tmp_path / "events.jsonl"
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    data = {
        "raw": b"\x00\xff",
        "tags": frozenset({"a"}),
        "ratio": math.nan,
        (1, 2): "tuple key",
        "cycle": cyclic,
        "text": "caf\u00e9 \udcff",
    }
    JsonEventHandler(path).process_event(Event("app", None, data, timestamp=STAMP))
    (line,) = read_lines(path)
    written = line["data"]
    assert written["raw"] == repr(b"\x00\xff")
    assert written["tags"] == repr(frozenset({"a"}))
    assert written["ratio"] == "nan"
    assert written["(1, 2)"] == "tuple key"
    assert written["cycle"] == [1, repr(cyclic)]
    assert written["text"] == "caf\u00e9 \udcff"


def test_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """file="stdout" writes each line to the process's standard output."""
    JsonEventHandler("stdout").process_event(tail_event())
    out = capsys.readouterr().out
    assert json.loads(out)["data"]["rule"] == "ssh-failure"
    assert out.endswith("\n")


def test_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """file="stderr" writes each line to the process's standard error."""
    JsonEventHandler("stderr", fields=["line"]).process_event(tail_event(line="x"))
    assert capsys.readouterr().err == '{"line": "x"}\n'


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block with the process's umask set to ``mask``, then put the old one back."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def output_handlers(path: Path, **settings: Any) -> list[Any]:
    """A json handler and a print handler writing to ``path``, with the same settings."""
    return [JsonEventHandler(path, **settings), PrintEventHandler(path, **settings)]


@pytest.mark.parametrize("kind", [0, 1], ids=["json", "print"])
def test_output_file_is_created_0600_unless_mode_says_otherwise(tmp_path: Path, kind: int) -> None:
    """A file json or print creates is 0600 by default and exactly mode otherwise, whatever
    the umask; an existing file keeps its own mode."""
    default, given, existing = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    existing.touch()
    existing.chmod(0o644)
    with umask(0o022):
        output_handlers(default)[kind].process_event(tail_event())
    assert default.stat().st_mode & 0o777 == 0o600
    with umask(0o077):
        output_handlers(given, mode="0640")[kind].process_event(tail_event())
        output_handlers(existing)[kind].process_event(tail_event())
    assert given.stat().st_mode & 0o777 == 0o640
    assert existing.stat().st_mode & 0o777 == 0o644
    assert all(path.read_text() for path in (default, given, existing))


@pytest.mark.parametrize("kind", [0, 1], ids=["json", "print"])
def test_output_file_refuses_a_symlink_planted_at_its_path(tmp_path: Path, kind: int) -> None:
    """A symbolic link at the output path fails the event and its target stays untouched."""
    target = tmp_path / "authorized_keys"
    target.write_text("ssh-ed25519 AAAA owner\n")
    target.chmod(0o600)
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "created-through-link")
    for path in (link, dangling):
        with pytest.raises(OSError, match="refusing to follow the symbolic link") as caught:
            output_handlers(path)[kind].process_event(tail_event())
        assert caught.value.errno == errno.ELOOP
        assert caught.value.filename == str(path)
    assert target.read_text() == "ssh-ed25519 AAAA owner\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "created-through-link").exists()


def test_json_escapes_line_separators_so_a_record_stays_one_line(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 in a value are written as escapes: splitlines() sees one
    line per record, and the value reads back the same."""
    out = tmp_path / "events.jsonl"
    line = "Failed password for a\u2028b\u2029c\x85d from 203.0.113.9 port 22 ssh2 \u00e9"
    JsonEventHandler(out, fields=["line"]).process_event(tail_event(line=line))
    JsonEventHandler(out, fields=["ip"]).process_event(tail_event())
    text = out.read_text(encoding="utf-8")
    assert "\\u2028" in text and "\u00e9" in text
    records = text.splitlines()
    assert len(records) == 2
    assert json.loads(records[0]) == {"line": line}


def test_json_handler_travels_without_its_open_file(tmp_path: Path) -> None:
    """A handler that already wrote is serialized without its descriptor; the copy reopens."""
    path = tmp_path / "events.jsonl"
    handler = JsonEventHandler(path)
    handler.process_event(tail_event(line="before"))
    for module in (pickle, dill):
        copy = module.loads(module.dumps(handler))
        assert copy._fd is None
        copy.process_event(tail_event(line=f"from a {module.__name__} copy"))
        copy.close()
    handler.close()
    assert [line["data"]["line"] for line in read_lines(path)] == [
        "before",
        "from a pickle copy",
        "from a dill copy",
    ]


def test_json_str_shows_settings(tmp_path: Path) -> None:
    """str() of the handler shows where it writes and which fields."""
    text = str(JsonEventHandler(tmp_path / "x.jsonl", fields=["line"]))
    assert text == (
        f"JsonEventHandler(file={str(tmp_path / 'x.jsonl')!r}, fields=['line'], mode='0600')"
    )


# == command =====================================================================================

# Writes its arguments (after the output path), working directory and EVENTMP_* environment
# to the file named by its first argument. No braces: every argument is a template.
REPORT = (
    "import json, os, sys; json.dump(dict(argv=sys.argv[2:], cwd=os.getcwd(), "
    "env=dict((k, v) for k, v in os.environ.items() if k.startswith('EVENTMP_') "
    "or k == 'EXTRA')), open(sys.argv[1], 'w'))"
)


def test_command_gets_arguments_and_environment_from_the_event(tmp_path: Path) -> None:
    """Each argument is filled from the event, and each field of env_fields is in the
    environment."""
    out = tmp_path / "report.json"
    exported = ["ip", "line", "line_number", "0", "2", "groups", "originator", "timestamp"]
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{ip}", "user={user}", "{line}"],
        env={"EXTRA": "yes"},
        env_fields=exported,
    )
    assert handler.process_event(tail_event()) is True
    report = json.loads(out.read_text())
    assert report["argv"] == [
        "203.0.113.9",
        "user=root",
        "Failed password for root from 203.0.113.9 port 22",
    ]
    env = report["env"]
    assert env["EVENTMP_IP"] == "203.0.113.9"
    assert env["EVENTMP_LINE"] == "Failed password for root from 203.0.113.9 port 22"
    assert env["EVENTMP_LINE_NUMBER"] == "42"
    assert env["EVENTMP_0"] == "for root from 203.0.113.9"
    assert env["EVENTMP_2"] == "203.0.113.9"
    assert json.loads(env["EVENTMP_GROUPS"]) == ["root", "203.0.113.9"]
    assert env["EVENTMP_ORIGINATOR"] == "tail"
    assert float(env["EVENTMP_TIMESTAMP"]) == STAMP
    assert env["EXTRA"] == "yes"
    assert "EVENTMP_USER" not in env


def test_command_string_is_split_before_filling_and_never_shell(tmp_path: Path) -> None:
    """A command string is split like a shell would, but a field's value stays one argument
    and shell syntax in it is never interpreted."""
    out = tmp_path / "report.json"
    hostile = "a b; touch pwned $(touch pwned) `touch pwned` 'q\" | cat"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(REPORT)} {out} '{{line}}' tail"
    handler = CommandEventHandler(command)
    handler.process_event(tail_event(line=hostile))
    assert json.loads(out.read_text())["argv"] == [hostile, "tail"]
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


def test_command_runs_in_cwd(tmp_path: Path) -> None:
    """cwd sets the working directory of the command."""
    out = tmp_path / "report.json"
    workdir = tmp_path / "work"
    workdir.mkdir()
    CommandEventHandler([sys.executable, "-c", REPORT, str(out)], cwd=workdir).process_event(
        tail_event()
    )
    assert json.loads(out.read_text())["cwd"] == str(workdir)


def test_command_environment_for_non_dict_data_and_nul(tmp_path: Path) -> None:
    """Non-dict data goes in EVENTMP_DATA; a NUL in a value does not stop the command."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out)], env_fields="data")
    handler.process_event(Event("app", None, "bad\x00byte", timestamp=STAMP))
    assert json.loads(out.read_text())["env"]["EVENTMP_DATA"] == "bad\ufffdbyte"


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{user}", "--output=/tmp/eventmp-test-x"),
        ("{ip}", "-j"),
        ("{user}", "-"),
        ("{user}{ip}", "-j"),
    ],
)
def test_command_field_that_would_be_an_option_is_refused(
    tmp_path: Path, template: str, value: str
) -> None:
    """An argument that a field starts with '-' fails the event and the program never runs."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out), template])
    event = tail_event(
        named={"user": value, "ip": value}
        if template != "{user}{ip}"
        else {
            "user": "",
            "ip": value,
        }
    )
    with pytest.raises(ValueError, match=r"argv\[4\].*starts with '-' from a field"):
        handler.process_event(event)
    assert not out.exists()


def test_command_option_from_a_field_only_where_the_author_allows_it(tmp_path: Path) -> None:
    """A '-' value is passed after a literal '--', after the author's own text, or with
    options_from_fields."""
    out = tmp_path / "report.json"
    event = tail_event(named={"user": "--output=/tmp/x", "ip": "-j"})
    after_dashes = [sys.executable, "-c", REPORT, str(out), "--user={user}", "--", "{ip}"]
    CommandEventHandler(after_dashes).process_event(event)
    assert json.loads(out.read_text())["argv"] == ["--user=--output=/tmp/x", "--", "-j"]
    allowed = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{user}", "{ip}"], options_from_fields="true"
    )
    allowed.process_event(event)
    assert json.loads(out.read_text())["argv"] == ["--output=/tmp/x", "-j"]


def test_command_nul_in_a_field_becomes_u_fffd(tmp_path: Path) -> None:
    """A NUL in a field's value reaches the program as U+FFFD instead of failing the event."""
    out = tmp_path / "report.json"
    event = tail_event(named={"user": "ro\x00ot", "ip": "\x00"})
    CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{user}", "x{ip:>4}"]
    ).process_event(event)
    assert json.loads(out.read_text())["argv"] == ["ro\ufffdot", "x   \ufffd"]
    CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=["user"]
    ).process_event(event)
    assert json.loads(out.read_text())["env"]["EVENTMP_USER"] == "ro\ufffdot"


def test_command_with_a_200_kib_line_runs_and_exports_only_what_is_asked(tmp_path: Path) -> None:
    """A 200 KiB line is not exported unless asked, and then it is cut to ENV_VALUE_MAX bytes
    and marked in EVENTMP_TRUNCATED."""
    out = tmp_path / "report.json"
    line = "Failed password for " + "A" * 200 * 1024 + " from 203.0.113.9 port 22 ssh2"
    event = tail_event(line=line)
    CommandEventHandler([sys.executable, "-c", REPORT, str(out), "{ip}"]).process_event(event)
    report = json.loads(out.read_text())
    assert report["argv"] == ["203.0.113.9"]
    assert set(report["env"]) <= {"EVENTMP_STRICT_LEDGER"}  # the test suite's own
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=["ip", "line"]
    )
    handler.process_event(event)
    env = json.loads(out.read_text())["env"]
    assert env["EVENTMP_IP"] == "203.0.113.9"
    assert env["EVENTMP_LINE"] == line[:ENV_VALUE_MAX]
    assert env["EVENTMP_TRUNCATED"] == "EVENTMP_LINE"


def test_command_environment_is_capped_in_total_without_splitting_a_character(
    tmp_path: Path,
) -> None:
    """Several large fields together stay within ENV_TOTAL_MAX, each cut on a character."""
    out = tmp_path / "report.json"
    big = "\u00e9" * 100_000  # two bytes each in UTF-8
    data = {name: big for name in "abcdef"}
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=list("abcdef")
    )
    handler.process_event(Event("app", None, data, timestamp=STAMP))
    env = json.loads(out.read_text())["env"]
    env.pop("EVENTMP_STRICT_LEDGER", None)  # the test suite's own
    truncated = env.pop("EVENTMP_TRUNCATED")
    assert truncated == " ".join(f"EVENTMP_{name.upper()}" for name in "abcdef")
    sizes = [len(f"{name}={value}".encode()) + 1 for name, value in env.items()]
    assert sum(sizes) <= ENV_TOTAL_MAX
    assert sum(sizes) > ENV_TOTAL_MAX - 2  # a two-byte character may not fit
    for value in env.values():
        assert len(value.encode()) <= ENV_VALUE_MAX
        assert big.startswith(value)
    assert len(env["EVENTMP_A"]) == ENV_VALUE_MAX // 2


def test_command_missing_env_field_is_a_template_error(tmp_path: Path) -> None:
    """A field in env_fields that the event lacks raises TemplateError before anything runs."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out)], env_fields="usr")
    with pytest.raises(TemplateError, match="usr"):
        handler.process_event(tail_event())
    assert not out.exists()


def test_command_non_zero_exit_raises_command_failed(tmp_path: Path) -> None:
    """A command that exits 3 raises CommandFailedError with the status and its stderr."""
    script = "import sys; sys.stderr.write('first line' + chr(10) + 'user not found'); sys.exit(3)"
    handler = CommandEventHandler([sys.executable, "-c", script, "{user}"])
    with pytest.raises(CommandFailedError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert isinstance(error, EventmpError)
    assert error.returncode == 3
    assert error.argv == [sys.executable, "-c", script, "root"]
    assert error.stderr.endswith("user not found")
    assert "status 3" in str(error)
    assert "user not found" in str(error)


def test_command_killed_by_signal_is_a_failure() -> None:
    """A command killed by a signal raises CommandFailedError naming the signal."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(CommandFailedError) as caught:
        CommandEventHandler([sys.executable, "-c", script]).process_event(tail_event())
    assert caught.value.returncode == -signal.SIGKILL
    assert "SIGKILL" in str(caught.value)


def test_command_stderr_passes_through_on_success(capsys: pytest.CaptureFixture[str]) -> None:
    """What a successful command writes to stderr reaches the worker's stderr."""
    script = "import sys; sys.stderr.write('warning: disk almost full')"
    CommandEventHandler([sys.executable, "-c", script]).process_event(tail_event())
    assert "warning: disk almost full" in capsys.readouterr().err


def test_command_past_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    """A command past its timeout is killed, its children too, and CommandTimeoutError raised."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(child.pid)); "
        "sys.stderr.write('started'); sys.stderr.flush(); time.sleep(60)"
    )
    handler = CommandEventHandler([sys.executable, "-c", script, str(pid_file)], timeout="1s")
    with pytest.raises(CommandTimeoutError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert error.timeout == 1.0
    assert error.stderr == "started"
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(gone)


def test_command_returns_though_a_child_it_left_holds_stderr(tmp_path: Path) -> None:
    """A command that exits, leaving a background child with its stderr open, still returns."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(child.pid))"
    )
    handler = CommandEventHandler([sys.executable, "-c", script, str(pid_file)], timeout="30s")
    try:
        assert handler.process_event(tail_event()) is True
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_command_that_does_not_exist() -> None:
    """A program that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="no-such-program-eventmp"):
        CommandEventHandler("no-such-program-eventmp {ip}").process_event(tail_event())


def test_command_errors_survive_a_round_trip() -> None:
    """CommandFailedError and CommandTimeoutError cross pickle with their attributes."""
    failed = CommandFailedError(["notify", "x"], 3, "boom")
    timed_out = CommandTimeoutError(["sleep", "9"], 2.5, "")
    for module in (pickle, dill):
        loaded = module.loads(module.dumps(failed))
        assert (loaded.argv, loaded.returncode, loaded.stderr) == (["notify", "x"], 3, "boom")
        assert str(loaded) == str(failed)
        loaded_timeout = module.loads(module.dumps(timed_out))
        assert (loaded_timeout.argv, loaded_timeout.timeout) == (["sleep", "9"], 2.5)
        assert str(loaded_timeout) == str(timed_out)


def test_command_env_as_string() -> None:
    """env given as a string is read as NAME=value items, quoted like a shell's."""
    handler = CommandEventHandler("true", env="A=1 'B=two words'")
    assert handler.env == {"A": "1", "B": "two words"}


# == webhook =====================================================================================


def test_webhook_posts_the_event_as_json(hook_server: Callable[..., HookServer]) -> None:
    """The event is POSTed as the JSON record to the URL filled from the event, with headers."""
    server = hook_server([200])
    handler = WebhookEventHandler(
        server.url + "/hooks/{rule}", headers={"X-Source": "eventmp-tests"}
    )
    assert handler.process_event(tail_event()) is True
    (request,) = server.requests
    assert request["method"] == "POST"
    assert request["path"] == "/hooks/ssh-failure"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Source"] == "eventmp-tests"
    assert json.loads(request["body"]) == event_record(tail_event())


def test_webhook_method_put(hook_server: Callable[..., HookServer]) -> None:
    """method chooses the HTTP method."""
    server = hook_server([204])
    WebhookEventHandler(server.url, method="put").process_event(tail_event())
    assert server.requests[0]["method"] == "PUT"


def test_webhook_retries_after_503_then_succeeds(hook_server: Callable[..., HookServer]) -> None:
    """Two 503 answers are retried with exponential backoff and the third attempt succeeds."""
    server = hook_server([503, 503, 200])
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    handler = WebhookEventHandler(server.url, retries=3, backoff="10ms", sleep=sleep)
    assert handler.process_event(tail_event()) is True
    assert len(server.requests) == 3
    assert delays == [0.01, 0.02]
    bodies = {request["body"] for request in server.requests}
    assert len(bodies) == 1


def test_webhook_does_not_retry_400(hook_server: Callable[..., HookServer]) -> None:
    """A 400 answer is not retried: WebhookError with the status after one attempt."""
    server = hook_server([400, 200])
    handler = WebhookEventHandler(server.url + "/x", retries=3, backoff=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert (error.url, error.status, error.attempts) == (server.url + "/***", 400, 1)
    assert "answer 400" in error.reason
    assert len(server.requests) == 1


def test_webhook_gives_up_after_retries_on_5xx(hook_server: Callable[..., HookServer]) -> None:
    """A server that keeps answering 500 gets retries + 1 attempts, then WebhookError."""
    server = hook_server([500])
    handler = WebhookEventHandler(server.url, retries="2", backoff="0")
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert len(server.requests) == 3
    assert "HTTP 500" in str(caught.value)


def test_webhook_times_out_retries_and_gives_up(hook_server: Callable[..., HookServer]) -> None:
    """A server that never answers times each attempt out; after the retries, WebhookError."""
    server = hook_server(hang=True)
    handler = WebhookEventHandler(server.url, timeout="0.3s", retries=1, backoff="10ms")
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert error.status is None
    assert error.attempts == 2
    assert "timed out" in error.reason
    assert wait_until(lambda: len(server.requests) == 2)


def test_webhook_connection_refused_is_retried() -> None:
    """Nothing listening is a connection error: retried, then WebhookError without a status."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    handler = WebhookEventHandler(url, retries=2, backoff=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (None, 3)
    assert "refused" in caught.value.reason.lower()


def test_webhook_does_not_follow_redirects(hook_server: Callable[..., HookServer]) -> None:
    """A redirect is an error, not followed: urllib would resend the POST as a bodiless GET."""
    server = hook_server([302])
    with pytest.raises(WebhookError) as caught:
        WebhookEventHandler(server.url, retries=3).process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (302, 1)
    assert len(server.requests) == 1


def test_webhook_credentials_in_url_become_basic_auth_and_stay_hidden(
    hook_server: Callable[..., HookServer],
) -> None:
    """user:password@ in the URL is sent as basic auth and never shown in str() or errors."""
    server = hook_server([401])
    url = server.url.replace("http://", "http://bot:hunter2@") + "/hook"
    handler = WebhookEventHandler(url, headers={"X-Api-Key": "k3y", "X-Plain": "shown"})
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert server.requests[0]["headers"]["Authorization"] == "Basic Ym90Omh1bnRlcjI="
    assert server.requests[0]["headers"]["X-Api-Key"] == "k3y"
    assert "hunter2" not in str(caught.value)
    assert caught.value.url.startswith("http://***@127.0.0.1:")  # user and password hidden
    text = str(handler)
    assert "hunter2" not in text
    assert "k3y" not in text
    assert "shown" in text


BAN_VALUES = [
    "bob&ip=10.0.0.1",
    "bob#admin",
    "bob\x1b[31m",
    "a/../b?c d=e",
    "caf\u00e9 %41",
]


@pytest.mark.parametrize("user", BAN_VALUES)
def test_webhook_query_value_from_a_field_arrives_as_one_parameter(
    hook_server: Callable[..., HookServer], user: str
) -> None:
    """A field in the query is percent-encoded: the server gets it intact, in one attempt."""
    server = hook_server([200])
    sleeps: list[float] = []
    handler = WebhookEventHandler(
        server.url + "/ban?ip={ip}&user={user}", retries=3, backoff=0, sleep=sleeps.append
    )
    event = tail_event(named={"user": user, "ip": "203.0.113.6"})
    assert handler.process_event(event) is True
    (request,) = server.requests
    path, _, query = request["path"].partition("?")
    assert path == "/ban"
    assert urllib.parse.parse_qs(query, strict_parsing=True) == {
        "ip": ["203.0.113.6"],
        "user": [user],
    }
    assert sleeps == []


@pytest.mark.parametrize("user", ["../admin", *BAN_VALUES[1:]])
def test_webhook_path_segment_from_a_field_stays_one_segment(
    hook_server: Callable[..., HookServer], user: str
) -> None:
    """A field in the path is percent-encoded, '/' included: it stays one path segment."""
    server = hook_server([200])
    handler = WebhookEventHandler(server.url + "/users/{user}/ban", retries=0)
    assert handler.process_event(tail_event(named={"user": user, "ip": "1"})) is True
    (request,) = server.requests
    segments = request["path"].split("/")
    assert segments[:2] == ["", "users"]
    assert segments[3:] == ["ban"]
    assert urllib.parse.unquote(segments[2]) == user


def test_webhook_error_shows_control_characters_escaped(
    hook_server: Callable[..., HookServer],
) -> None:
    """A failure's text (what eventmp logs) holds no raw control character from a field."""
    server = hook_server([500])
    handler = WebhookEventHandler(server.url + "/ban?user={user}", retries=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event(named={"user": "bob\x1b]0;pwned\x07\n", "ip": "1"}))
    text = str(caught.value)
    assert text.isprintable()
    assert "bob" not in text  # the path and query are not shown at all (they may hold a token)
    assert caught.value.url == server.url + "/***"
    assert (caught.value.status, caught.value.attempts) == (500, 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://{ip}/ban",
        "http://127.0.0.1:{port}/ban",
        "http://hooks{user}.example/ban",
        "http://bot:{user}@hooks.example/ban",
        "{url}",
        "{scheme}://hooks.example/ban",
        "http://hooks.example:99999/ban",
        "http://hooks.example/ban?user=a b",
        "http://hooks.example/ban?user=\x1b",
    ],
)
def test_webhook_url_whose_destination_a_field_could_choose_is_refused(url: str) -> None:
    """A field in the scheme, host, port or userinfo, or a malformed URL, fails at load time."""
    with pytest.raises(ValueError, match="setting 'url'"):
        WebhookEventHandler(url)


def test_webhook_error_survives_a_round_trip() -> None:
    """WebhookError crosses pickle with its url, status, attempts and reason."""
    error = WebhookError("http://x/", 503, 4, "Service Unavailable")
    loaded = pickle.loads(pickle.dumps(error))
    assert (loaded.url, loaded.status, loaded.attempts, loaded.reason) == (
        "http://x/",
        503,
        4,
        "Service Unavailable",
    )
    assert str(loaded) == str(error)


# == mail ========================================================================================


def test_mail_sends_subject_body_and_recipients(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """A mail goes to every recipient, subject and body filled from the event's fields."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com, Security <sec@example.com>",
        subject="[{rule}] {user} from {ip}",
        body="{time}\n{file}:{line_number}: {line}\n",
        sender="Watcher <watcher@example.org>",
        host="127.0.0.1",
        port=port,
    )
    assert handler.process_event(tail_event()) is True
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "watcher@example.org"
    assert envelope.rcpt_tos == ["ops@example.com", "sec@example.com"]
    message = inbox.message()
    assert message["Subject"] == "[ssh-failure] root from 203.0.113.9"
    assert message["From"] == "Watcher <watcher@example.org>"
    assert message["To"] == "ops@example.com, Security <sec@example.com>"
    assert message["Message-ID"].endswith("@example.org>")
    body = message.get_content()
    assert "/var/log/auth.log:42: Failed password for root from 203.0.113.9 port 22" in body


def test_mail_default_templates_and_list_of_recipients(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """By default the subject names the rule and the body is the line; to may be a list."""
    inbox, port = smtp_server()
    handler = MailEventHandler(["a@example.com", "b@example.com"], port=str(port), host="127.0.0.1")
    handler.process_event(tail_event(line="caf\u00e9 down"))
    assert inbox.envelopes[0].rcpt_tos == ["a@example.com", "b@example.com"]
    message = inbox.message()
    assert message["Subject"] == "eventmp: ssh-failure"
    assert message.get_content().splitlines() == ["caf\u00e9 down"]


def test_mail_event_cannot_inject_headers(smtp_server: Callable[..., tuple[Inbox, int]]) -> None:
    """Line breaks in a filled subject become spaces: an event cannot add a header."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", subject="{line}", host="127.0.0.1", port=port)
    handler.process_event(tail_event(line="alert\r\nBcc: thief@example.net"))
    assert inbox.envelopes[0].rcpt_tos == ["ops@example.com"]
    message = inbox.message()
    assert message["Bcc"] is None
    assert message["Subject"] == "alert Bcc: thief@example.net"


MAIL_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
]
ENCODED_WORD = (
    "=?utf-8?q?root=0D=0AReply-To:_attacker@evil.example=0D=0AContent-Type:_text/html"
    "=0D=0A=0D=0A<a_href=https://evil.example>Reset</a>?="
)


def test_mail_encoded_word_in_a_field_adds_no_header_and_no_body(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """An RFC 2047 encoded word in a field stays literal text: the mail has only its own headers."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com",
        subject="failed login for {user}",
        body="user {user}\n{line}",
        host="127.0.0.1",
        port=port,
    )
    assert handler.process_event(tail_event(named={"user": ENCODED_WORD, "ip": "1"})) is True
    (envelope,) = inbox.envelopes
    assert envelope.rcpt_tos == ["ops@example.com"]
    message = inbox.message()
    assert message.keys() == MAIL_HEADERS
    assert message["Reply-To"] is None
    assert message["Subject"] == "failed login for " + ENCODED_WORD.replace("=?", "= ?")
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain"
    assert message.get_content().splitlines() == [f"user {ENCODED_WORD}", tail_data()["line"]]


def test_mail_control_characters_in_a_field_are_escaped_in_the_subject(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """Control characters of a field show as escapes in the subject, other line breaks as spaces."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", subject="{user}", host="127.0.0.1", port=port)
    handler.process_event(tail_event(named={"user": "a\x1b[31mb\x00c\u2028d\x85e", "ip": "1"}))
    message = inbox.message()
    assert message.keys() == MAIL_HEADERS
    assert message["Subject"] == "a\\x1b[31mb\\x00c d e"


def test_mail_subject_that_decodes_to_a_line_break_is_refused(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """A field inside the template's own encoded word fails the event; nothing is sent."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com", subject="=?utf-8?q?{user}?=", host="127.0.0.1", port=port
    )
    event = tail_event(named={"user": "root=0D=0ABcc:_thief@example.net", "ip": "1"})
    with pytest.raises(ValueError, match=r"header 'Subject' would hold a line break"):
        handler.process_event(event)
    assert inbox.envelopes == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("to", "=?utf-8?q?Ops=0D=0ABcc:_thief@example.net?= <ops@example.com>"),
        ("to", "Ops: ops@example.com;"),
        ("to", "ops@example.com\x1b"),
        ("sender", "a@example.com, b@example.com"),
        ("sender", "=?utf-8?q?W=0D=0AReply-To:_thief@example.net?= <w@example.com>"),
    ],
)
def test_mail_address_that_is_not_one_plain_address_is_refused(setting: str, value: str) -> None:
    """Each recipient and the sender must parse as a valid address without line breaks."""
    settings = {"to": "ops@example.com", setting: value}
    with pytest.raises(ValueError, match=f"setting '{setting}'"):
        MailEventHandler(**settings)


def test_mail_logs_in_with_username_and_password(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """With username and password the handler logs in before sending, even after a dill trip."""
    inbox, port = smtp_server(auth=True)
    handler = MailEventHandler(
        "ops@example.com", host="127.0.0.1", port=port, username="watcher", password="s3cret"
    )
    dill.loads(dill.dumps(handler)).process_event(tail_event())
    assert inbox.logins == [("watcher", "s3cret")]
    assert len(inbox.envelopes) == 1


def test_mail_wrong_password_is_an_error(smtp_server: Callable[..., tuple[Inbox, int]]) -> None:
    """A login the server refuses raises smtplib's authentication error; nothing is sent."""
    inbox, port = smtp_server(auth=True)
    handler = MailEventHandler(
        "ops@example.com", host="127.0.0.1", port=port, username="watcher", password="wrong"
    )
    with pytest.raises(smtplib.SMTPAuthenticationError):
        handler.process_event(tail_event())
    assert inbox.envelopes == []


def test_mail_starttls_against_a_server_without_it(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """starttls=True refuses to go on in clear text when the server does not offer STARTTLS."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", host="127.0.0.1", port=port, starttls="yes")
    with pytest.raises(smtplib.SMTPNotSupportedError):
        handler.process_event(tail_event())
    assert inbox.envelopes == []


def test_mail_str_never_shows_the_password() -> None:
    """str() shows the settings, with the password replaced by ***."""
    handler = MailEventHandler("ops@example.com", username="watcher", password="s3cret")
    text = str(handler)
    assert "s3cret" not in text
    assert "password='***'" in text
    assert "username='watcher'" in text
    assert "s3cret" not in repr(handler)


def test_mail_missing_field_is_a_template_error() -> None:
    """A subject naming a field the event lacks fails before any connection is made."""
    handler = MailEventHandler("ops@example.com", port=free_port(), host="127.0.0.1")
    with pytest.raises(TemplateError, match="rule"):
        handler.process_event(Event("app", None, "no rule here"))


# == count =======================================================================================


def test_count_passes_every_nth_within_window() -> None:
    """count=3 passes the third event, then starts again and passes the sixth."""
    clock = FakeClock()
    handler = CountEventHandler(3, window="10s", clock=clock)
    results = []
    for _ in range(6):
        results.append(handler.process_event(tail_event()))
        clock.now += 1
    assert results == [False, False, True, False, False, True]


def test_count_forgets_occurrences_older_than_window() -> None:
    """Occurrences that left the window no longer count towards the next pass."""
    clock = FakeClock()
    handler = CountEventHandler(3, window=10, clock=clock)
    assert handler.process_event(tail_event()) is False  # t=0
    clock.now += 5
    assert handler.process_event(tail_event()) is False  # t=5
    clock.now += 5  # t=10: the first is exactly one window old, so out
    assert handler.process_event(tail_event()) is False
    clock.now += 1
    assert handler.process_event(tail_event()) is True  # t=5, 10, 11


def test_count_counts_each_key_apart() -> None:
    """With a key template, each filled key is counted on its own."""
    clock = FakeClock()
    handler = CountEventHandler(2, key="{ip}", clock=clock)
    a = tail_event(named={"ip": "10.0.0.1"})
    b = tail_event(named={"ip": "10.0.0.2"})
    assert [handler.process_event(e) for e in (a, b, a, b)] == [False, False, True, True]


def test_count_of_one_passes_everything() -> None:
    """count=1 passes every event."""
    handler = CountEventHandler(1, clock=FakeClock())
    assert all(handler.process_event(tail_event()) for _ in range(5))


def test_count_stops_a_chain(tmp_path: Path) -> None:
    """As a link in a chain, count lets only the events it passes reach the next handler."""
    recorder = RecordingHandler(tmp_path / "seen.jsonl")
    chain = ChainEventHandler(CountEventHandler(2, clock=FakeClock()), recorder)
    results = [chain.process_event(Event("app", None, n)) for n in range(6)]
    assert results == [False, True, False, True, False, True]
    assert [record["data"] for record in recorder.records()] == [1, 3, 5]


def test_count_forgets_idle_keys() -> None:
    """Keys not seen for a window are dropped, so memory follows the active keys."""
    clock = FakeClock()
    handler = CountEventHandler(5, window=10, key="{data}", clock=clock)
    for n in range(100):
        handler.process_event(Event("app", None, n))
    clock.now += 20
    handler.process_event(Event("app", None, "new"))
    assert list(handler._times) == ["new"]


def test_count_state_starts_fresh_in_each_copy() -> None:
    """A serialized handler (what a worker receives) starts counting from zero."""
    clock = FakeClock()
    handler = CountEventHandler(2, clock=clock)
    assert handler.process_event(tail_event()) is False
    copy = dill.loads(dill.dumps(handler))
    assert copy.process_event(tail_event()) is False
    assert handler.process_event(tail_event()) is True


def test_count_str_shows_settings_not_state() -> None:
    """str() shows count, window and key, not the clock or the counts."""
    assert str(CountEventHandler("4", "1m", "{ip}")) == (
        "CountEventHandler(count=4, window=60.0, key='{ip}', max_keys=100000)"
    )


def test_count_missing_key_field_is_a_template_error() -> None:
    """A key naming a field the event lacks raises TemplateError."""
    with pytest.raises(TemplateError, match="ip"):
        CountEventHandler(2, key="{ip}").process_event(Event("app", None, 1))


# == throttle ====================================================================================


def test_throttle_passes_at_most_limit_per_interval() -> None:
    """At most limit events pass in any interval; suppressed ones do not count."""
    clock = FakeClock()
    handler = ThrottleEventHandler(2, interval="10s", clock=clock)
    timeline = []
    for offset in (0, 1, 2, 9.5, 10, 10.5, 11, 11.5):
        clock.now = 1000 + offset
        timeline.append(handler.process_event(tail_event()))
    # Passed at 0 and 1; at 10 the one of 0 has left the window; at 11 the one of 1 has.
    assert timeline == [True, True, False, False, True, False, True, False]


def test_throttle_is_per_key() -> None:
    """Each filled key has its own limit."""
    clock = FakeClock()
    handler = ThrottleEventHandler(1, key="{ip}", clock=clock)
    a = tail_event(named={"ip": "10.0.0.1"})
    b = tail_event(named={"ip": "10.0.0.2"})
    assert [handler.process_event(e) for e in (a, b, a, b)] == [True, True, False, False]


def test_throttle_steady_flood_passes_limit_each_interval() -> None:
    """A steady flood (one event per second) passes exactly limit events in each interval."""
    clock = FakeClock(0.0)
    handler = ThrottleEventHandler(3, interval=10, clock=clock)
    passed = []
    for second in range(60):
        clock.now = float(second)
        if handler.process_event(tail_event()):
            passed.append(second)
    assert passed == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52]


def test_throttle_str_shows_settings() -> None:
    """str() shows limit, interval and key."""
    assert str(ThrottleEventHandler(5, 30, "", "10")) == (
        "ThrottleEventHandler(limit=5, interval=30.0, key='', max_keys=10)"
    )


# == bounded state ===============================================================================


def keyed(value: str) -> Event:
    """An event whose data is ``value``, for a count or throttle keyed on ``{data}``."""
    return Event("app", None, value, timestamp=STAMP)


def test_count_keeps_at_most_max_keys_evicting_the_least_recently_seen() -> None:
    """Many distinct keys never make count hold more than max_keys; the least recently seen
    key goes, and seen again it counts from zero."""
    clock = FakeClock()
    handler = CountEventHandler(2, window="1h", key="{data}", max_keys=3, clock=clock)
    assert [handler.process_event(keyed(k)) for k in "abc"] == [False, False, False]
    assert handler.process_event(keyed("a")) is True  # a is now the most recently seen
    assert handler.process_event(keyed("d")) is False  # evicts b, the least recently seen
    assert list(handler._times) == ["c", "a", "d"]
    assert handler.process_event(keyed("b")) is False  # afresh: b's first occurrence is gone
    assert handler.process_event(keyed("d")) is True  # d was kept (c was evicted for b)
    for n in range(10_000):
        handler.process_event(keyed(f"2001:db8::{n:x}"))
        assert len(handler._times) <= 3
    assert handler.evictions == 2 + 10_000  # b, c, then one per new address


def test_throttle_keeps_at_most_max_keys_and_an_evicted_key_passes_afresh() -> None:
    """A throttled key evicted by max_keys newer keys passes again as if new."""
    clock = FakeClock()
    handler = ThrottleEventHandler(1, interval="1h", key="{data}", max_keys=2, clock=clock)
    assert handler.process_event(keyed("a")) is True
    assert handler.process_event(keyed("a")) is False
    assert handler.process_event(keyed("b")) is True
    assert handler.process_event(keyed("a")) is False  # a is seen again: now b is the oldest
    assert handler.process_event(keyed("c")) is True  # evicts b
    assert handler.process_event(keyed("a")) is False  # a was kept
    assert handler.process_event(keyed("b")) is True  # b was evicted: it passes afresh
    assert list(handler._times) == ["a", "b"]
    assert handler.evictions == 2


def test_evictions_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Evictions give one warning per minute of the handler's clock, with the counts."""
    clock = FakeClock()
    handler = CountEventHandler(5, window="1h", key="{data}", max_keys=10, clock=clock)
    with caplog.at_level("WARNING", logger="eventmp"):
        for n in range(10):
            handler.process_event(keyed(str(n)))
        assert caplog.records == []  # full, nothing evicted yet
        for n in range(10, 1010):
            handler.process_event(keyed(str(n)))
        clock.now += 59
        handler.process_event(keyed("next"))
        assert len(caplog.records) == 1
        clock.now += 1
        handler.process_event(keyed("last"))
    first, second = (record.getMessage() for record in caplog.records)
    assert "max_keys=10" in first and "evicted 1 least recently seen keys" in first
    assert "1 in all" in first
    assert "evicted 1001 least recently seen keys since the last report, 1002 in all" in second
    assert handler.evictions == 1002


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


def test_json_lines_from_several_workers_do_not_interleave(tmp_path: Path) -> None:
    """Two workers appending long lines to one file leave every line whole."""
    out = tmp_path / "events.jsonl"
    handler = JsonEventHandler(out)
    events = [Event("app", handler, {"n": n, "pad": "x" * 20_000}) for n in range(200)]
    assert run_events(events, timeout=WAIT, workers=2, poll_interval=0.05) == []
    lines = read_lines(out)
    assert sorted(line["data"]["n"] for line in lines) == list(range(200))


SIGINT_REPORT = (
    "import signal, sys; open(sys.argv[1], 'w').write(str(signal.getsignal(signal.SIGINT)))"
)


def test_command_in_a_worker_does_not_inherit_ignored_sigint(tmp_path: Path) -> None:
    """A command started by a worker (which ignores SIGINT) gets SIGINT's default action."""
    out = tmp_path / "sigint.txt"
    handler = CommandEventHandler([sys.executable, "-c", SIGINT_REPORT, str(out)])
    assert run_events([Event("app", handler, 1)], timeout=WAIT, poll_interval=0.05) == []
    # Python installs its KeyboardInterrupt handler only where SIGINT was not ignored.
    assert out.read_text() == str(signal.default_int_handler)


# == secrets =====================================================================================


def test_webhook_failure_and_str_show_no_token_nor_url_password(
    hook_server: Callable[..., HookServer],
) -> None:
    """A webhook that fails shows only the scheme, host and port of its URL, never a token."""
    server = hook_server([500])
    host = server.url.removeprefix("http://")
    url = f"http://alice:p@ss-SECRET@{host}/hook/TOKEN-123?k=TOKEN-123&r={{rule}}"
    handler = WebhookEventHandler(url, retries=0, headers={"X-Api-Key": "KEY-456"})
    with pytest.raises(WebhookError) as info:
        handler.process_event(tail_event())
    assert server.requests[0]["path"] == "/hook/TOKEN-123?k=TOKEN-123&r=ssh-failure"
    for shown in (str(info.value), info.value.url, str(handler), describe_handler(handler)):
        assert "TOKEN-123" not in shown and "p@ss" not in shown and "alice" not in shown
        assert "KEY-456" not in shown
    assert info.value.url == f"http://***@{host}/***"
    assert f"WebhookEventHandler(url='http://***@{host}/***'" in str(handler)


def test_command_and_mail_str_hide_env_values_and_the_password() -> None:
    """A command's env values and a mail password show as *** (the variable names stay)."""
    command = CommandEventHandler(["true"], env={"API_KEY": "ENV-SECRET-789"})
    assert "ENV-SECRET-789" not in str(command)
    assert "env={'API_KEY': '***'}" in str(command)
    mail = MailEventHandler("ops@example.com", username="u", password="MAIL-PW-321")
    assert "MAIL-PW-321" not in str(mail) and "password='***'" in str(mail)
