"""``command``: :class:`CommandEventHandler`, which runs a program per event, never a shell.

The handler is built in the parent, where its argument templates and environment are checked;
the program runs in the worker, which blocks until it exits or its timeout kills its process
group. Its environment and arguments are filled there, from each event.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..errors import CommandFailedError, CommandTimeoutError, TemplateError
from ..event import Event
from ..handlers import EventHandler
from ..templates import Fields, literal_prefix, names, printable, render_fields
from .jsonfile import _jsonable
from .settings import _bad, _boolean, _duration, _environment, _names, _template, _text

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
        values = Fields(event)
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
