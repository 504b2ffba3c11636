"""Built-in action handlers: what a rule does with a match.

- :class:`JsonEventHandler` (``json``): append one JSON object per event to a file or stream.
- :class:`CommandEventHandler` (``command``): run a program, never through a shell.
- :class:`WebhookEventHandler` (``webhook``): HTTP POST of the event as JSON, with retries.
- :class:`MailEventHandler` (``mail``): send a mail over SMTP.
- :class:`CountEventHandler` (``count``) and :class:`ThrottleEventHandler` (``throttle``): the
  suppression links of a chain, which return false to stop it.

:data:`BUILTIN_HANDLERS` maps the short names a pipeline file uses to these classes (and to
``print`` and ``exec`` from :mod:`eventmp.handlers`).

Every handler is built in the parent and runs in a worker process. So every setting is accepted
as a string too (``"30s"``, ``"3"``, ``"true"``) and checked when the handler is built, with a
``ValueError`` that names the setting; templates are checked then as well (see
:mod:`eventmp.templates`). What cannot travel to a worker (an open file) is opened there on first
use and left behind by ``__getstate__``. The worker keeps one instance of each handler across
events, which is what gives ``count`` and ``throttle`` their memory: per worker process.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import email
import email.policy
import http.client
import json
import logging
import math
import os
import re
import selectors
import shlex
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import IO, Any

from ..errors import CommandFailedError, CommandTimeoutError, TemplateError, WebhookError
from ..event import Event
from ..handlers import (
    EventHandler,
    ExecEventHandler,
    PrintEventHandler,
    file_mode,
    open_output,
)
from ..redact import SECRET, redact_settings, redact_url
from ..templates import (
    check,
    fields,
    literal_prefix,
    names,
    printable,
    render,
    render_encoded,
    render_fields,
)
from ..units import parse_bool, parse_duration

logger = logging.getLogger("eventmp")

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


# -- checking settings ----------------------------------------------------------------------------


def _bad(owner: str, setting: str, problem: str) -> ValueError:
    return ValueError(f"{owner}: setting {setting!r}: {problem}")


def _duration(owner: str, setting: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise _bad(owner, setting, str(exc)) from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "more than 0"
        raise _bad(owner, setting, f"must be {bound} seconds, got {value!r}")
    return seconds


def _integer(owner: str, setting: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value)
    ):
        number = int(value)
    if number is None:
        raise _bad(owner, setting, f"expected a whole number, got {value!r}")
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise _bad(owner, setting, f"expected a whole number {bounds}, got {value!r}")
    return number


def _boolean(owner: str, setting: str, value: Any) -> bool:
    try:
        return parse_bool(value)
    except (TypeError, ValueError) as exc:
        raise _bad(owner, setting, str(exc)) from None


def _text(owner: str, setting: str, value: Any, *, one_line: bool = False) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _bad(owner, setting, f"expected a non-empty string, got {value!r}")
    if one_line and ("\n" in value or "\r" in value):
        raise _bad(owner, setting, f"must be one line, got {value!r}")
    return value


def _template(owner: str, setting: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(owner, setting, f"expected a template string, got {value!r}")
    try:
        check(value)
    except ValueError as exc:
        raise _bad(owner, setting, str(exc)) from None
    return value


def _function(owner: str, setting: str, value: Any) -> Callable[..., Any]:
    if not callable(value):
        raise _bad(owner, setting, f"expected a callable, got {value!r}")
    return value  # type: ignore[no-any-return]


def _names(owner: str, setting: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _bad(owner, setting, f"expected a list of field names, got {value!r}")
    for item in items:
        if not isinstance(item, str) or not item:
            raise _bad(owner, setting, f"expected non-empty field names, got {item!r}")
    if not items:
        raise _bad(owner, setting, "expected at least one field name")
    return items


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_NAME = re.compile(r"[^=\x00]+")


def _headers(owner: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        # One "Name: value" per line: a header value may itself hold commas and semicolons.
        pairs: list[tuple[Any, Any]] = []
        for line in value.splitlines():
            if line.strip():
                name, colon, text = line.partition(":")
                if not colon:
                    raise _bad(owner, "headers", f"expected 'Name: value' lines, got {line!r}")
                pairs.append((name.strip(), text.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _bad(owner, "headers", f"expected a table of header names to values, got {value!r}")
    headers: dict[str, str] = {}
    for name, text in pairs:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise _bad(owner, "headers", f"not a header name: {name!r}")
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise _bad(owner, "headers", f"header {name!r}: expected a string, got {text!r}")
        if "\n" in str(text) or "\r" in str(text):
            raise _bad(owner, "headers", f"header {name!r}: a value must be one line")
        headers[name] = str(text)
    return headers


def _environment(owner: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for item in shlex.split(value):
            name, equals, text = item.partition("=")
            if not equals:
                raise _bad(owner, "env", f"expected NAME=value items, got {item!r}")
            pairs.append((name, text))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _bad(owner, "env", f"expected a table of variable names to values, got {value!r}")
    env: dict[str, str] = {}
    for name, text in pairs:
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise _bad(owner, "env", f"not an environment variable name: {name!r}")
        if isinstance(text, bool):
            text = "true" if text else "false"
        if not isinstance(text, (str, int, float)) or "\x00" in str(text):
            raise _bad(owner, "env", f"variable {name!r}: expected a string, got {text!r}")
        env[name] = str(text)
    return env


# -- the event as JSON ----------------------------------------------------------------------------


def event_record(event: Event, names: list[str] | None = None) -> dict[str, Any]:
    """The object that ``json`` writes and ``webhook`` posts for ``event``.

    By default ``timestamp``, ``time``, ``originator`` and ``data``; with ``names``, those
    fields of :func:`eventmp.templates.fields` only, in that order (a field the event lacks
    raises :class:`~eventmp.errors.TemplateError`, as in a template).
    """
    values = fields(event)
    if names is None:
        return {
            "timestamp": values["timestamp"],
            "time": values["time"],
            "originator": values["originator"],
            "data": event.data,
        }
    record: dict[str, Any] = {}
    for name in names:
        if name not in values:
            raise TemplateError(name, sorted(values))
        record[name] = values[name]
    return record


def _jsonable(value: Any, active: set[int]) -> Any:
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        # NaN and the infinities are not JSON; json.dumps would write them anyway.
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return repr(value)
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return {_json_key(key): _jsonable(item, active) for key, item in value.items()}
            return [_jsonable(item, active) for item in value]
        finally:
            active.discard(id(value))
    return repr(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return repr(key)


# Line separators that json.dumps writes raw with ensure_ascii=False (it escapes those below
# U+0020 itself): str.splitlines() and JavaScript split a record at them.
_LINE_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json_bytes(record: Mapping[str, Any]) -> bytes:
    text = json.dumps(_jsonable(dict(record), set()), ensure_ascii=False, allow_nan=False)
    # Outside strings JSON has none of these characters, so each one escaped is still the
    # same string, and a record is one line for every line splitter.
    text = text.translate(_LINE_SEPARATORS)
    # A lone surrogate (text decoded with surrogateescape) cannot be UTF-8; written as \\udcXX
    # it is still a valid JSON escape for the same string.
    return text.encode("utf-8", "backslashreplace")


_STREAMS = ("stdout", "stderr")


def _write_stream(stream: IO[str], data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("utf-8"))
    else:
        # Bytes straight to the buffer: the stream's own encoding might not take every line.
        stream.flush()
        buffer.write(data)
        buffer.flush()
    stream.flush()


class JsonEventHandler(EventHandler):
    """Append one JSON object per event, one per line (JSON Lines).

    The object has ``timestamp``, ``time`` (ISO 8601, local), ``originator`` and ``data``; with
    ``fields`` (a list, or names separated by commas), only those fields of
    :func:`eventmp.templates.fields` (``["time", "file", "line", "ip"]``). A value that is not
    JSON (bytes, a set, an object) is written as its ``repr()``; NaN and the infinities too.

    The characters U+0085, U+2028 and U+2029, which ``str.splitlines()`` (and JavaScript)
    treat as line breaks, are written as the escapes ``\\u0085``, ``\\u2028`` and ``\\u2029``, so
    one record is one line for every reader; other non-ASCII text is written as UTF-8.

    ``file`` is a path, opened for append in the worker on first use, or
    ``"stdout"``/``"stderr"`` (the worker's streams, inherited from the parent). A path is
    opened with :func:`~eventmp.handlers.open_output`: a missing file is created with
    permissions ``mode`` (default ``0o600``; ``"0640"`` works too) whatever the umask, an
    existing one keeps its own, and a symbolic link at the path is refused (``OSError``,
    ``ELOOP``) instead of followed. Each line is written with a single ``write()`` and is on
    disk (in the page cache) when the handler returns, so several workers can append to one
    file without mixing their lines.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] = "stdout",
        fields: list[str] | str | None = None,
        mode: int | str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.file = _text(owner, "file", "stdout" if file is None else file)
        self.fields = _names(owner, "fields", fields)
        self.mode = file_mode(owner, mode)
        self._fd: int | None = None

    def settings(self) -> dict[str, Any]:
        shown = dict(super().settings())
        shown["mode"] = f"{self.mode:04o}"
        return shown

    def process_event(self, event: Event) -> bool:
        data = _json_bytes(event_record(event, self.fields)) + b"\n"
        if self.file in _STREAMS:
            _write_stream(getattr(sys, self.file), data)
            return True
        if self._fd is None:
            self._fd = open_output(self.file, self.mode)
        view = memoryview(data)
        while view:
            # O_APPEND makes each write() land at the end, whole; a short write (a full disk)
            # is finished by a second one.
            written = os.write(self._fd, view)
            view = view[written:]
        return True

    def close(self) -> None:
        """Close the file, if this process opened it (it is reopened by the next event)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        # A file descriptor means nothing in another process: the worker opens its own.
        return dict(vars(self), _fd=None)


# -- command --------------------------------------------------------------------------------------

_STDERR_TAIL = 8192  # bytes of a command's stderr kept for its error
_KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for a command past its timeout
_POLL = 0.5  # seconds between checks that a running command is still alive
_PIPE_GRACE = 0.5  # seconds to wait for stderr to close once the command has exited


class _Expired(Exception):
    pass


def _environment_name(field: str) -> str:
    return "EVENTMP_" + re.sub(r"[^A-Z0-9_]", "_", field.upper())


def _environment_value(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(_jsonable(value, set()), ensure_ascii=False)
    else:
        text = str(value)
    # The environment cannot hold a NUL; a log line can.
    return _no_nul(text)


def _no_nul(text: str) -> str:
    """``text`` with each NUL, which no argument or variable can hold, made U+FFFD."""
    return text.replace("\x00", "\ufffd")


# What the EVENTMP_* variables of one command may hold, in bytes (UTF-8): far below the
# kernel's MAX_ARG_STRLEN (128 KiB for one NAME=value string) and its total for the
# arguments and environment together (ARG_MAX, 2 MiB or more).
ENV_VALUE_MAX = 16 * 1024
ENV_TOTAL_MAX = 64 * 1024
# Shown value of a refused argument, in characters.
_SHOWN_MAX = 80


def _clip(text: str, limit: int) -> str:
    """The longest start of ``text`` whose UTF-8 form has at most ``limit`` bytes."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    cut = max(limit, 0)
    # Not in the middle of a character: back off continuation bytes (0b10xxxxxx).
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut].decode("utf-8", "surrogatepass")


def _exported(names: list[str], values: Mapping[str, Any]) -> dict[str, str]:
    """The ``EVENTMP_*`` variables for the fields ``names``, capped in size.

    Each value is cut to :data:`ENV_VALUE_MAX` bytes, and the values together to what
    :data:`ENV_TOTAL_MAX` leaves once every ``NAME=`` and terminating NUL is counted, in the
    order of ``names``. When any was cut, ``EVENTMP_TRUNCATED`` lists the cut variables'
    names, separated by spaces (it is not counted: the author's list bounds it).
    """
    for field in names:
        if field not in values:
            raise TemplateError(field, sorted(values))
    exported = {_environment_name(field): _environment_value(values[field]) for field in names}
    room = ENV_TOTAL_MAX - sum(len(name.encode("utf-8")) + 2 for name in exported)
    env: dict[str, str] = {}
    cut: list[str] = []
    for name, text in exported.items():
        kept = _clip(text, min(ENV_VALUE_MAX, room))
        room -= len(kept.encode("utf-8", "surrogatepass"))
        if kept != text:
            cut.append(name)
        env[name] = kept
    if cut:
        env["EVENTMP_TRUNCATED"] = " ".join(cut)
    return env


class CommandEventHandler(EventHandler):
    """Run a program for each event, with arguments filled from the event; never a shell.

    ``argv`` is a list of templates, one per argument, or one string split like a shell would
    (:func:`shlex.split`) *before* the templates are filled: a field's value is always one
    argument, whatever spaces or quotes it holds, and nothing in it is interpreted. A literal
    brace is written ``{{`` or ``}}``. Each NUL in a field's text becomes U+FFFD (an argument
    cannot hold a NUL); a NUL in the template's own text is refused when the handler is built.

    A field never makes an option. An argument whose template starts with a field (``{ip}``,
    ``{user}@{host}``) and whose filled text starts with ``-`` fails the event with
    ``ValueError`` before anything runs: ``-j`` or ``--output=/tmp/x`` from a log line never
    reaches the program. Not checked: arguments after a literal ``--`` argument of the template
    (the program's own end of options), arguments whose template starts with its own text
    (``--user={user}``, ``user={user}``), and every argument with ``options_from_fields`` true.

    The program's environment is the worker's, plus each field named in ``env_fields`` (none
    by default) as ``EVENTMP_<FIELD>`` (upper-case, other characters turned into ``_``; lists
    and dicts as JSON, ``None`` as "", NUL as U+FFFD), plus ``env`` (a table, or
    ``"NAME=value ..."``), which wins. Each exported value is cut to :data:`ENV_VALUE_MAX`
    bytes of UTF-8 and all of them together to :data:`ENV_TOTAL_MAX`, in the order of
    ``env_fields``; when any was cut, ``EVENTMP_TRUNCATED`` names the cut variables. A field
    in ``env_fields`` that the event lacks raises :class:`~eventmp.errors.TemplateError`. It
    runs in ``cwd`` (default: the worker's).

    Its standard output is the worker's; its standard error passes through to the worker's as
    it comes, and its tail is kept for the error. Its standard input is empty, and SIGINT has
    its default action in it (the worker does not ignore SIGINT: it handles it by doing
    nothing, and exec resets handled signals). It runs in a process group of
    its own: after ``timeout`` (a duration; ``None`` for no limit) the group gets SIGTERM, then
    SIGKILL a second later, so a shell script's children go too, and
    :class:`CommandTimeoutError` is raised. A non-zero exit raises :class:`CommandFailedError`
    with the status and the tail of standard error. Returns true otherwise. A child the command
    leaves running in the background is not waited for, nor killed.

    The worker blocks while the command runs: keep ``timeout`` below the dispatcher's
    ``event_timeout``, or a command may outlive a worker killed for taking too long.
    """

    def __init__(
        self,
        argv: list[str] | str,
        timeout: float | str | None = "30s",
        env: Mapping[str, str] | str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env_fields: list[str] | str | None = None,
        options_from_fields: bool | str = False,
    ) -> None:
        owner = type(self).__name__
        if isinstance(argv, str):
            try:
                parts: list[Any] = shlex.split(argv)
            except ValueError as exc:
                raise _bad(owner, "argv", f"cannot split {argv!r}: {exc}") from None
        elif isinstance(argv, (list, tuple)):
            parts = [os.fspath(part) if isinstance(part, os.PathLike) else part for part in argv]
        else:
            raise _bad(owner, "argv", f"expected a list of strings or one string, got {argv!r}")
        if not parts:
            raise _bad(owner, "argv", "the command is empty")
        for number, part in enumerate(parts):
            _template(owner, f"argv[{number}]", part)
            if "\x00" in part:
                raise _bad(owner, f"argv[{number}]", "an argument cannot hold a NUL")
        self.argv: list[str] = parts
        self.timeout = None if timeout is None else _duration(owner, "timeout", timeout)
        self.env = _environment(owner, env)
        self.cwd = None if cwd is None else _text(owner, "cwd", cwd)
        self.env_fields = _names(owner, "env_fields", env_fields) or []
        self.options_from_fields = _boolean(owner, "options_from_fields", options_from_fields)
        # The arguments a field could turn into an option: those whose template starts with a
        # field, up to the first literal '--' (after which a '-' is no option, by convention).
        end = parts.index("--", 1) if "--" in parts[1:] else len(parts)
        self._checked = (
            set()
            if self.options_from_fields
            else {n for n in range(end) if names(parts[n]) and not literal_prefix(parts[n])}
        )

    def arguments(self, values: Mapping[str, Any]) -> list[str]:
        """The argv for an event's :func:`~eventmp.templates.fields` ``values``.

        Raises ``ValueError`` when a field would start an argument with ``-`` (see the class).
        """
        argv = [render_fields(template, values, escape=_no_nul) for template in self.argv]
        for number in sorted(self._checked):
            if argv[number].startswith("-"):
                shown = printable(argv[number])
                if len(shown) > _SHOWN_MAX:
                    shown = shown[:_SHOWN_MAX] + "..."
                raise ValueError(
                    f"argv[{number}] {self.argv[number]!r} would be the option {shown!r}, "
                    f"which starts with '-' from a field; not run (options_from_fields = true "
                    f"allows it, or put a literal '--' before it)"
                )
        return argv

    def process_event(self, event: Event) -> bool:
        values = fields(event)
        argv = self.arguments(values)
        env = dict(os.environ)
        env.update(_exported(self.env_fields, values))
        env.update(self.env)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.cwd,
            process_group=0,
        )
        tail = bytearray()
        try:
            returncode = self._wait(process, tail)
        except _Expired:
            _kill_group(process)
            assert self.timeout is not None
            raise CommandTimeoutError(argv, self.timeout, _decode_tail(tail)) from None
        except BaseException:
            _kill_group(process)
            raise
        finally:
            assert process.stderr is not None
            process.stderr.close()
        if returncode != 0:
            raise CommandFailedError(argv, returncode, _decode_tail(tail))
        return True

    def _wait(self, process: subprocess.Popen[bytes], tail: bytearray) -> int:
        """Pass the command's stderr on until it closes, then reap it; raise _Expired."""
        assert process.stderr is not None
        fd = process.stderr.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        exited_at: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if process.poll() is not None:
                    exited_at = now if exited_at is None else exited_at
                    # A child it left in the background may hold stderr open for ever.
                    if now - exited_at >= _PIPE_GRACE or (deadline is not None and now >= deadline):
                        break
                elif deadline is not None and now >= deadline:
                    raise _Expired
                wait = _POLL if exited_at is None else _PIPE_GRACE
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if not selector.select(wait):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                tail += chunk
                del tail[:-_STDERR_TAIL]
                _pass_on(decoder.decode(chunk))
        _pass_on(decoder.decode(b"", final=True))
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return process.wait(remaining)
        except subprocess.TimeoutExpired:
            raise _Expired from None


def _pass_on(text: str) -> None:
    """Write a command's stderr text to this process's stderr, if it has one."""
    if text and sys.stderr is not None:
        sys.stderr.write(text)
        sys.stderr.flush()


def _decode_tail(tail: bytearray) -> str:
    return bytes(tail).decode("utf-8", "replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, SIGKILL it a moment later, and reap the command."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_KILL_GRACE)
    # The command may have left on SIGTERM while children it started did not.
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


# -- webhook --------------------------------------------------------------------------------------

# The scheme and authority (userinfo, host, port) at the start of a webhook URL template.
_ORIGIN = re.compile(r"(https?)://([^/?#]*)", re.IGNORECASE)


def _quote_component(text: str) -> str:
    """A field's text percent-encoded as one URL path segment or query value.

    Nothing is left as it is but letters, digits and ``_.-~``: ``&``, ``=``, ``#``, ``/``, ``?``,
    spaces and control characters all become ``%XX``. Text decoded with surrogateescape gets
    its original bytes back.
    """
    return urllib.parse.quote(text, safe="", errors="surrogateescape")


def _url_origin(owner: str, url: str) -> tuple[str, str]:
    """The (scheme, authority) of a URL template, which must be the author's own text."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise _bad(owner, "url", f"must not hold spaces or control characters: {printable(url)!r}")
    prefix = literal_prefix(url)
    match = _ORIGIN.match(prefix)
    if match is None:
        raise _bad(owner, "url", f"expected an http:// or https:// URL, got {url!r}")
    if names(url) and match.end() == len(prefix):
        # The first field would be part of the host or port (or the userinfo): a log line
        # would choose where the event goes.
        raise _bad(
            owner,
            "url",
            f"a field may not be part of the scheme, host or port; write the host literally "
            f"and put fields after the '/', '?' or '#' that ends it: {url!r}",
        )
    try:
        parts = urllib.parse.urlsplit(match.group(0))
        port = parts.port
    except ValueError as exc:
        raise _bad(owner, "url", f"{exc}: {url!r}") from None
    if not parts.hostname or port == 0:
        raise _bad(owner, "url", f"expected a host (and a port from 1 to 65535): {url!r}")
    return parts.scheme.lower(), parts.netloc


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows a 301/302/303 answer to a POST with a GET that drops the body: the
    # event would be lost while the request looked successful.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookEventHandler(EventHandler):
    """Send the event as JSON (the object :class:`JsonEventHandler` writes) to ``url``.

    ``url`` is a template (``https://alerts.example/{rule}``); a ``user:password@`` part
    becomes HTTP basic authentication. ``str()`` and errors show only the URL's scheme, host and
    port (:func:`eventmp.redact.redact_url`: a token in the path or query, or the userinfo,
    shows as ``***``). The scheme (``http`` or
    ``https``), the userinfo, host and port must be the template's own text: a field before the
    ``/``, ``?`` or ``#`` that ends the host, a bad port, or a space or control character in
    the template is refused when the handler is built. Each field's text is percent-encoded
    (:func:`urllib.parse.quote`, ``safe=""``), so a value stays one path segment or query
    value whatever ``&``, ``=``, ``#``, ``/`` or control characters it holds; the URL and the
    reason in an error show any control character as an escape. ``headers`` (a table,
    or ``"Name: value"`` lines) are sent as they are, after ``Content-Type: application/json``;
    ``method`` is ``POST`` by default. Proxies come from the usual environment variables.

    Each attempt may wait ``timeout`` for the connection and for each answer read, as urllib
    counts it. A 2xx answer is success. Connection errors, timeouts and 5xx answers are tried
    again, up to ``retries`` more times, after ``backoff``, then twice that, and so on; a 4xx
    answer is not (the request itself is wrong), nor a redirect (urllib would turn the POST
    into a GET without its body), nor a certificate that does not verify, nor a URL the
    HTTP client rejects as malformed. Then it raises
    :class:`WebhookError` with the URL, the last status and the number of attempts. The worker
    waits through the retries.
    """

    def __init__(
        self,
        url: str,
        timeout: float | str = "10s",
        retries: int | str = 3,
        backoff: float | str = "0.5s",
        headers: Mapping[str, str] | str | None = None,
        method: str = "POST",
        *,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        owner = type(self).__name__
        self.url = _template(owner, "url", url)
        self._origin = _url_origin(owner, url)
        self.timeout = _duration(owner, "timeout", timeout)
        self.retries = _integer(owner, "retries", retries, 0)
        self.backoff = _duration(owner, "backoff", backoff, allow_zero=True)
        self.headers = _headers(owner, headers)
        if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
            raise _bad(owner, "method", f"expected an HTTP method such as POST, got {method!r}")
        self.method = method.upper()
        self._sleep = _function(owner, "sleep", sleep)

    def settings(self) -> dict[str, Any]:
        # The URL's userinfo, path and query and secret headers' values show as ***.
        return redact_settings(
            {
                "url": self.url,
                "timeout": self.timeout,
                "retries": self.retries,
                "backoff": self.backoff,
                "headers": self.headers,
                "method": self.method,
            }
        )

    def process_event(self, event: Event) -> bool:
        # Each field percent-encoded: a value stays one path segment or query value.
        url = render_encoded(self.url, fields(event), _quote_component)
        shown = printable(redact_url(url))
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme.lower(), parts.netloc) != self._origin:
            raise ValueError(f"webhook URL {shown!r} does not go where its template says")
        target, authorization = _split_credentials(url)
        headers = {"Content-Type": "application/json", "User-Agent": "eventmp"}
        if authorization:
            headers["Authorization"] = authorization
        headers.update(self.headers)
        body = _json_bytes(event_record(event))
        opener = urllib.request.build_opener(_RefuseRedirects)
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                request = urllib.request.Request(target, body, headers, method=self.method)
            except ValueError as exc:
                reason = _without_url(str(exc), target)
                raise WebhookError(shown, None, attempt, printable(reason)) from None
            status, reason, again = self._attempt(opener, request)
            if status is not None and 200 <= status < 300:
                return True
            if not again or attempt == attempts:
                raise WebhookError(shown, status, attempt, printable(_without_url(reason, target)))
            self._sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _attempt(
        self, opener: urllib.request.OpenerDirector, request: urllib.request.Request
    ) -> tuple[int | None, str, bool]:
        """One request: (status or None, what happened, whether another try may help)."""
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return int(response.status), str(response.reason), False
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            except (OSError, ValueError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            reason = f"{exc.reason}: {detail}" if detail else str(exc.reason)
            return exc.code, reason, exc.code >= 500
        except urllib.error.URLError as exc:
            again = not isinstance(exc.reason, ssl.SSLCertVerificationError)
            return None, str(exc.reason), again
        except (http.client.InvalidURL, ValueError) as exc:
            # A malformed URL stays malformed: trying again only delays the error.
            return None, f"malformed URL: {exc}", False
        except (OSError, http.client.HTTPException) as exc:
            return None, str(exc) or type(exc).__name__, True


def _without_url(reason: str, url: str) -> str:
    """``reason`` with ``url``, or its path and query, replaced by ``***``: an error from the
    HTTP client can quote them, and they may hold a token."""
    parts = urllib.parse.urlsplit(url)
    selector = urllib.parse.urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    hidden = redact_url(url)
    for text, shown in ((url, hidden), (repr(url)[1:-1], hidden)):
        reason = reason.replace(text, shown)
    if selector not in ("", "/"):
        for text in (selector, repr(selector)[1:-1]):
            reason = reason.replace(text, SECRET)
    return reason


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without its ``user:password@`` part, and that part as a basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), header


# -- mail -----------------------------------------------------------------------------------------

# What the mail handler's message holds, in this order, and nothing else.
_MAIL_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
)


def _header_text(text: str) -> str:
    """A field's text made harmless in a header: one line, printable, no encoded word.

    Each line break (CR, LF, NEL, U+2028...) becomes a space, any other control or invisible
    character its escape (see :func:`~eventmp.templates.printable`), and ``=?`` becomes
    ``= ?``: an RFC 2047 encoded word such as ``=?utf-8?q?=0D=0A?=`` would otherwise be decoded
    into the very line break the first step took out.
    """
    return printable(" ".join(text.splitlines())).replace("=?", "= ?")


def _mail_addresses(owner: str, setting: str, items: list[Any]) -> list[Address]:
    """Each item parsed as mail addresses, or a ``ValueError`` naming ``setting``."""
    found: list[Address] = []
    for item in items:
        _text(owner, setting, item, one_line=True)
        if not item.isprintable():
            raise _bad(owner, setting, f"control character in {printable(item)!r}")
        try:
            header = email.policy.default.header_factory(setting, item)
            groups = header.groups
        except (ValueError, IndexError, TypeError, AttributeError):
            raise _bad(owner, setting, f"not a mail address: {item!r}") from None
        problem = "; ".join(str(defect) for defect in header.defects)
        if not problem and any(group.display_name is not None for group in groups):
            problem = "a group is not an address"
        addresses = [address for group in groups for address in group.addresses]
        if not problem and not addresses:
            problem = "no address"
        for address in addresses:
            text = f"{address.display_name}{address.username}{address.domain}"
            if not address.username or not address.domain:
                problem = problem or f"{address.addr_spec!r} is not user@domain"
            elif not text.isprintable():
                # An encoded word in a display name can decode to a line break.
                problem = problem or f"control character in {printable(str(address))!r}"
        if problem:
            raise _bad(owner, setting, f"not a mail address: {item!r} ({problem})")
        found.extend(addresses)
    return found


class MailEventHandler(EventHandler):
    """Send a mail over SMTP for each event, subject and body filled from it.

    ``to`` is an address, several separated by commas, or a list (``"Ops <ops@example.com>"``
    forms are fine); ``sender`` is one address. Both are the author's text, not templates, and
    are checked when the handler is built: each a valid ``user@domain`` address, without
    groups, line breaks or control characters. ``subject`` and ``body`` are templates.

    Nothing in an event can add a header or a body part. In the subject each field's line
    breaks become spaces, its other control characters escapes (``\\x1b``) and an encoded-word
    opener ``=?`` becomes ``= ?``; the template's own line breaks become spaces too. A header
    that would still hold a line break once parsed back (an encoded word in the template's own
    text with a field inside it) fails the event with ``ValueError`` before anything is sent, as
    does a message whose headers are not exactly those the handler set. The body is one
    ``text/plain`` part that may hold anything. One connection per mail to
    ``host``:``port``, each step waiting at most ``timeout``; with ``starttls`` the connection
    is upgraded to TLS (certificate checked) before anything else, and with ``username`` and
    ``password`` the handler logs in. ``str()`` never shows the password.
    """

    def __init__(
        self,
        to: list[str] | str,
        subject: str = "eventmp: {rule}",
        body: str = "{line}",
        sender: str = "eventmp@localhost",
        host: str = "localhost",
        port: int | str = 25,
        timeout: float | str = "30s",
        starttls: bool | str = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if isinstance(to, str):
            items: list[Any] = [to]
        elif isinstance(to, (list, tuple)):
            items = list(to)
        else:
            raise _bad(owner, "to", f"expected an address or a list of addresses, got {to!r}")
        if not items:
            raise _bad(owner, "to", f"expected mail addresses, got {to!r}")
        addresses = _mail_addresses(owner, "to", items)
        self.to = [str(address) for address in addresses]
        self._recipients = [address.addr_spec for address in addresses]
        self.subject = _template(owner, "subject", subject)
        self.body = _template(owner, "body", body)
        senders = _mail_addresses(owner, "sender", [sender])
        if len(senders) != 1:
            raise _bad(owner, "sender", f"expected one mail address, got {sender!r}")
        self.sender = sender
        self._envelope_sender = senders[0].addr_spec
        self.host = _text(owner, "host", host, one_line=True)
        self.port = _integer(owner, "port", port, 1, 65535)
        self.timeout = _duration(owner, "timeout", timeout)
        self.starttls = _boolean(owner, "starttls", starttls)
        self.username = None if username is None else _text(owner, "username", username)
        if password is not None and not isinstance(password, str):
            raise _bad(owner, "password", "expected a string")
        if (username is None) != (password is None):
            raise _bad(owner, "password", "give both username and password, or neither")
        self._password = password

    def settings(self) -> dict[str, Any]:
        shown = dict(super().settings())
        shown["password"] = None if self._password is None else SECRET
        return shown

    def message(self, event: Event) -> EmailMessage:
        """The mail this handler sends for ``event``.

        Raises ``ValueError`` when a header would not be one line once parsed back, or when
        the message would not hold exactly the handler's headers and one text/plain part.
        """
        values = fields(event)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        subject = render_fields(self.subject, values, escape=_header_text)
        message["Subject"] = " ".join(subject.splitlines())
        message["Date"] = formatdate(localtime=True)
        # The sender's domain: make_msgid would otherwise ask DNS for this host's name.
        domain = self._envelope_sender.rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid("eventmp", domain=domain)
        message.set_content(render_fields(self.body, values))
        _check_message(message)
        return message

    def process_event(self, event: Event) -> bool:
        message = self.message(event)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            smtp.send_message(message, self._envelope_sender, self._recipients)
        return True


def _check_message(message: EmailMessage) -> None:
    """Raise ``ValueError`` unless ``message``, as sent, parses back to what was built."""
    for name in message:
        value = str(message[name])
        if not value.isprintable():
            raise ValueError(
                f"mail header {name!r} would hold a line break or control character once "
                f"decoded: {printable(value)!r}; not sent"
            )
    sent = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    if sent.keys() != list(_MAIL_HEADERS) or sent.get_content_type() != "text/plain":
        raise ValueError(
            f"mail would be sent with headers {printable(', '.join(sent.keys()))!r} and type "
            f"{sent.get_content_type()!r}, not the handler's own; not sent"
        )


# -- suppression ----------------------------------------------------------------------------------


MAX_KEYS = 100_000
"""How many keys ``count`` and ``throttle`` keep by default, per worker."""
EVICTION_LOG_INTERVAL = 60.0
"""Seconds between two log lines of one handler about the keys it evicted."""


class _KeyedWindow(EventHandler):
    """Timestamps per key within a time window, for count and throttle (state per worker).

    At most ``max_keys`` keys are kept: a new key beyond that evicts the least recently seen
    one, whose occurrences are forgotten (seen again, it starts afresh).
    """

    _window: float

    def _setup(self, owner: str, key: Any, max_keys: Any, clock: Any) -> None:
        self.key = _template(owner, "key", key)
        self.max_keys = _integer(owner, "max_keys", max_keys, 1)
        self._clock: Callable[[], float] = _function(owner, "clock", clock)
        # Least recently seen first: each event moves its key to the end.
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._swept: float | None = None
        self._evicted = 0
        self._reported = 0
        self._reported_at: float | None = None

    @property
    def evictions(self) -> int:
        """How many keys this copy of the handler evicted to stay within ``max_keys``."""
        return self._evicted

    def _recent(self, event: Event) -> tuple[float, deque[float]]:
        """Now, and the key's timestamps younger than the window (older ones dropped)."""
        now = self._clock()
        key = render(self.key, event) if self.key else ""
        horizon = now - self._window
        if self._swept is None or now - self._swept >= self._window:
            # Once a window, forget keys not seen within it, so memory follows the keys that
            # are active, not every key ever seen.
            self._swept = now
            for stale in [k for k, t in self._times.items() if not t or t[-1] <= horizon]:
                del self._times[stale]
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque()
            if len(self._times) > self.max_keys:
                self._times.popitem(last=False)
                self._evicted += 1
                self._report_evictions(now)
        else:
            self._times.move_to_end(key)
        while times and times[0] <= horizon:
            times.popleft()
        return now, times

    def _report_evictions(self, now: float) -> None:
        """Log the evictions, at most once every EVICTION_LOG_INTERVAL seconds."""
        if self._reported_at is not None and now - self._reported_at < EVICTION_LOG_INTERVAL:
            return
        logger.warning(
            "%s: more than max_keys=%d keys: evicted %d least recently seen keys since the "
            "last report, %d in all in this worker (an evicted key seen again starts afresh)",
            self,
            self.max_keys,
            self._evicted - self._reported,
            self._evicted,
        )
        self._reported, self._reported_at = self._evicted, now

    def __getstate__(self) -> dict[str, Any]:
        # Each worker starts counting from zero, whatever the parent's copy has seen.
        return dict(
            vars(self),
            _times=OrderedDict(),
            _swept=None,
            _evicted=0,
            _reported=0,
            _reported_at=None,
        )


class CountEventHandler(_KeyedWindow):
    """Pass on only the ``count``-th occurrence within ``window``: a link in a chain.

    Returns true when this event makes ``count`` events of the same key within the last
    ``window`` seconds (a sliding window: occurrences older than ``window`` no longer count),
    then starts counting again from zero; false otherwise, which stops the chain. ``key`` is a
    template (``"{ip}"``): events count separately per filled key; ``""`` counts every event
    together.

    The counts live in the worker process, per worker: with several workers, route events with
    the dispatcher's ``key=`` so that equal keys meet the same worker; a worker that is
    replaced (crash, recycling) starts from zero. At most ``max_keys`` keys are kept (default
    :data:`MAX_KEYS`): a new key beyond them evicts the least recently seen one, whose count
    is lost. :attr:`evictions` counts them, and a warning on the ``eventmp`` logger says how
    many, at most once every :data:`EVICTION_LOG_INTERVAL` seconds. ``clock`` (default
    :func:`time.monotonic`) is there for tests.
    """

    def __init__(
        self,
        count: int | str,
        window: float | str = "60s",
        key: str = "",
        max_keys: int | str = MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = type(self).__name__
        self.count = _integer(owner, "count", count, 1)
        self.window = self._window = _duration(owner, "window", window)
        self._setup(owner, key, max_keys, clock)

    def process_event(self, event: Event) -> bool:
        now, times = self._recent(event)
        times.append(now)
        if len(times) >= self.count:
            times.clear()
            return True
        return False


class ThrottleEventHandler(_KeyedWindow):
    """Pass on at most ``limit`` events per key in any ``interval``: a link in a chain.

    A sliding window: an event passes (true) when fewer than ``limit`` events of its key passed
    within the last ``interval`` seconds, and is suppressed (false, which stops the chain)
    otherwise. Suppressed events do not count, so a steady flood passes ``limit`` events every
    ``interval``, never a burst of twice that across a boundary as a fixed window would. ``key``
    is a template (``"{ip}"``); ``""`` throttles every event together.

    The state lives in the worker process, per worker: with several workers, route events with
    the dispatcher's ``key=`` so that equal keys meet the same worker; a worker that is
    replaced starts afresh. At most ``max_keys`` keys are kept, as for
    :class:`CountEventHandler`: an evicted key seen again passes as if new. ``clock``
    (default :func:`time.monotonic`) is there for tests.
    """

    def __init__(
        self,
        limit: int | str,
        interval: float | str = "60s",
        key: str = "",
        max_keys: int | str = MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = type(self).__name__
        self.limit = _integer(owner, "limit", limit, 1)
        self.interval = self._window = _duration(owner, "interval", interval)
        self._setup(owner, key, max_keys, clock)

    def process_event(self, event: Event) -> bool:
        now, times = self._recent(event)
        if len(times) < self.limit:
            times.append(now)
            return True
        return False


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
