"""Templates that built-in handlers fill from an event: ``"{rule} on {file}: {line}"``.

The syntax is that of :meth:`str.format` restricted to plain field names, so a template from a
pipeline file can read an event but never run code:

- ``{name}`` is replaced by the field ``name``; ``{{`` and ``}}`` stand for literal braces;
- a conversion (``!r``, ``!s``, ``!a``) and a standard format spec (``{count:>5}``,
  ``{timestamp:.0f}``) are allowed;
- attribute access (``{a.b}``), indexing (``{a[0]}``), positional fields (``{}``) and nested
  fields in a format spec (``{a:{width}}``) are rejected when the template is checked.

The fields an event offers are listed by :func:`fields`; :class:`Fields` gives the same ones
one at a time, for the handlers, which use a few per event. A field the event lacks raises
:class:`~eventmp.errors.TemplateError`, naming it and the fields that are there; a field whose
value is ``None`` (a regex group that did not take part in the match) renders as ``""``.
:func:`names` lists the fields a template uses, so a pipeline can compare them with the fields
its events will have before anything runs.

Field values from a log are attacker input. A handler that writes lines for people or line-based
tools (``print``) fills its template with ``escape=printable``: each field's text then shows a
newline as ``\\n``, an escape character as ``\\x1b`` and so on, so a line in a log cannot add a
line of its own to the output or move a terminal's cursor.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from .errors import TemplateError
from .event import Event, describe_originator

__all__ = [
    "Fields",
    "check",
    "fields",
    "literal_prefix",
    "local_time",
    "names",
    "printable",
    "render",
    "render_encoded",
    "render_fields",
]

# A field name is anything up to the closing brace but these: '.' and '[' would be attribute
# access and indexing, '!' and ':' start a conversion and a format spec, braces nest.
_FORBIDDEN_IN_NAME = ".[]{}!:"

# The standard format-spec mini-language: [[fill]align][sign][z][#][0][width][,_][.prec][type].
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?\d*[,_]?(?:\.\d+)?[bcdeEfFgGnosxX%]?", re.S)

_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}


def fields(event: Event) -> dict[str, Any]:
    """The names a template may use for ``event``, with their values.

    Always: ``originator`` (str), ``timestamp`` (float, seconds since the epoch) and ``time``
    (ISO 8601 in local time, with its UTC offset). When ``event.data`` is a dict: each of its
    string keys (``line``, ``file``, ``line_number``, ``rule``, ``match``... for a log tail's
    events), then ``"0"`` for ``data["match"]`` and ``"1"``, ``"2"``... for ``data["groups"]``,
    then the named groups of ``data["named"]`` at the top level. Later ones win, so a named
    group called ``file`` shadows the data's ``file``: the regex's author asked for it by name.
    When ``event.data`` is anything else: ``data``.
    """
    values: dict[str, Any] = {
        "originator": describe_originator(event.originator),
        "timestamp": event.timestamp,
        "time": local_time(event.timestamp),
    }
    data = event.data
    if not isinstance(data, dict):
        values["data"] = data
        return values
    values.update((key, value) for key, value in data.items() if isinstance(key, str))
    if "match" in data:
        values["0"] = data["match"]
    groups = data.get("groups")
    if isinstance(groups, (list, tuple)):
        values.update((str(number), group) for number, group in enumerate(groups, 1))
    named = data.get("named")
    if isinstance(named, Mapping):
        values.update((key, value) for key, value in named.items() if isinstance(key, str))
    return values


_MILLIS = tuple(f".{n:03d}" for n in range(1000))  # made once, not formatted per event
_FAR = 1e11  # seconds from the epoch within which local_time() takes its short way
# The last whole second local_time() formatted: (second, time.tzname then, its local date and
# time, its UTC offset).
_last_second: tuple[float, tuple[str, str], str, str] | None = None


def local_time(timestamp: float) -> str:
    """``timestamp`` as the ``time`` field shows it: ISO 8601 local time with milliseconds and
    the UTC offset, ``2026-11-29T17:03:57.123+01:00``.

    The same text as ``datetime.fromtimestamp(timestamp, UTC).astimezone()`` gives with
    ``isoformat(timespec="milliseconds")`` (from UTC: a naive local time is ambiguous in the
    hour a DST change repeats), but the local date, time and offset of a whole second are
    worked out once for all the events of that second: a worker formats many events a second,
    and the conversion to local time is most of the cost. They are worked out again after
    ``time.tzset()``, which is how a process takes a new ``TZ``.
    """
    global _last_second
    if not -_FAR < timestamp < _FAR:  # NaN too: the errors, if any, of the long way
        return (
            datetime.fromtimestamp(timestamp, UTC).astimezone().isoformat(timespec="milliseconds")
        )
    # The rounding of datetime.fromtimestamp(): to the microsecond, half to even, so that the
    # whole second and the milliseconds are those it would give.
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    # time.tzset() (how a process takes a new TZ; datetime's local time does not look at TZ
    # before it) makes a new tzname tuple.
    zone = time.tzname
    last = _last_second
    if last is None or last[0] != whole or last[1] is not zone:
        text = datetime.fromtimestamp(whole, UTC).astimezone().isoformat(timespec="seconds")
        last = _last_second = (whole, zone, text[:19], text[19:])
    return last[2] + _MILLIS[micros // 1000] + last[3]


class Fields(Mapping[str, Any]):
    """:func:`fields` of an event, each worked out when it is asked for.

    A handler uses a few of the fields, often the line and a group or two; building all of
    them (the local time above all) for every event would cost more than the handler's own
    work. A field has the value :func:`fields` gives it, the same precedence included; listing
    the names (iteration, ``len()``, an error's list of the fields there are) builds them all
    once.
    """

    __slots__ = ("_all", "_event")

    def __init__(self, event: Event) -> None:
        self._event = event
        self._all: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> Any:
        data = self._event.data
        if type(name) is not str:
            return self._whole()[name]
        if isinstance(data, dict):
            # Latest first, as fields() lets later ones win: named groups, groups, the match,
            # the data's own keys.
            named = data.get("named")
            if named and (type(named) is dict or isinstance(named, Mapping)) and name in named:
                return named[name]
            if name.isdecimal() and name.isascii() and len(name) < 19:
                if name == "0":
                    if "match" in data:
                        return data["match"]
                elif name[0] != "0":
                    groups = data.get("groups")
                    if isinstance(groups, (list, tuple)) and int(name) <= len(groups):
                        return groups[int(name) - 1]
            if name in data:
                return data[name]
        elif name == "data":
            return data
        if name == "time":
            return local_time(self._event.timestamp)
        if name == "timestamp":
            return self._event.timestamp
        if name == "originator":
            return describe_originator(self._event.originator)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def _whole(self) -> dict[str, Any]:
        if self._all is None:
            self._all = fields(self._event)
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())


# A parsed template: literal text, and fields as (name, conversion or "", format spec).
_Part = str | tuple[str, str, str]


@lru_cache(maxsize=256)
def _parse(template: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    literal: list[str] = []
    i, end = 0, len(template)
    while i < end:
        char = template[i]
        if char == "}":
            if template.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise _syntax(template, i, "single '}' (write '}}' for a literal brace)")
        if char != "{":
            literal.append(char)
            i += 1
            continue
        if template.startswith("{{", i):
            literal.append("{")
            i += 2
            continue
        close = template.find("}", i + 1)
        opened = template.find("{", i + 1)
        if close < 0:
            raise _syntax(template, i, "'{' is never closed (write '{{' for a literal brace)")
        if 0 <= opened < close:
            raise _syntax(
                template,
                opened,
                "nested '{' inside a field (fields in a format spec are not "
                "supported; write '{{' for a literal brace)",
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_parse_field(template, i, close))
        i = close + 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def _parse_field(template: str, start: int, close: int) -> tuple[str, str, str]:
    body = template[start + 1 : close]
    name_end = len(body)
    for mark in "!:":
        at = body.find(mark)
        if 0 <= at < name_end:
            name_end = at
    name, rest = body[:name_end], body[name_end:]
    for offset, char in enumerate(name):
        if char == ".":
            raise _syntax(
                template,
                start + 1 + offset,
                f"attribute access in {{{body}}} is not "
                "allowed: a template names fields, it does not run code",
            )
        if char in "[]":
            raise _syntax(
                template,
                start + 1 + offset,
                f"indexing in {{{body}}} is not allowed: "
                "a template names fields, it does not run code",
            )
        if char.isspace():
            raise _syntax(template, start + 1 + offset, f"space in field name {{{body}}}")
    if not name:
        raise _syntax(template, start, "empty field '{}': name a field, e.g. {line}")
    conversion = ""
    if rest.startswith("!"):
        conversion, rest = rest[1:2], rest[2:]
        if conversion not in _CONVERSIONS:
            raise _syntax(
                template,
                start + 1 + name_end,
                f"bad conversion in {{{body}}}: expected !r, !s or !a",
            )
        if rest and not rest.startswith(":"):
            raise _syntax(
                template,
                start + 1 + name_end + 2,
                f"expected ':' or '}}' after the conversion in {{{body}}}",
            )
    spec = rest[1:]
    if not _FORMAT_SPEC.fullmatch(spec):
        raise _syntax(
            template, start + 2 + len(body) - len(rest), f"bad format spec {spec!r} in {{{body}}}"
        )
    return name, conversion, spec


def _syntax(template: str, position: int, problem: str) -> ValueError:
    return ValueError(f"bad template {template!r} at position {position}: {problem}")


def check(template: str) -> None:
    """Raise ``ValueError`` (with the position of the problem) unless ``template`` is valid.

    Handlers call it when they are built, so a pipeline file with a bad template fails to load
    instead of failing in the worker on every event.
    """
    if not isinstance(template, str):
        raise ValueError(f"a template must be a string, not {type(template).__name__}")
    _parse(template)


def names(template: str) -> list[str]:
    """The field names ``template`` uses, in order of first use, each once.

    Raises ``ValueError`` for a template that :func:`check` rejects.
    """
    check(template)
    return list(dict.fromkeys(part[0] for part in _parse(template) if not isinstance(part, str)))


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character that :meth:`str.isprintable` refuses written as an escape.

    The escapes are those of :func:`repr`: ``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``,
    ``\\UNNNNNNNN``. That covers line breaks (``\\n``, ``\\r``, ``\\x85``, ``\\u2028``...), terminal
    control (``\\x1b``), and invisible format characters such as bidi overrides. Backslashes
    are left alone, so text that is already printable comes back unchanged.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def render(template: str, event: Event) -> str:
    """Fill ``template`` from ``event``'s :func:`fields`.

    Raises ``ValueError`` for a template that :func:`check` rejects, and
    :class:`~eventmp.errors.TemplateError` for a field the event does not have.
    """
    return render_fields(template, fields(event))


def render_fields(
    template: str,
    values: Mapping[str, Any],
    *,
    escape: Callable[[str], str] | None = None,
) -> str:
    """Fill ``template`` from ``values`` (what :func:`fields` returned, computed once for
    several templates).

    ``escape`` (for instance :func:`printable`) is applied to each field's text, never to the
    template's own text: a string value is escaped before its format spec pads it, so columns
    line up with what is shown; any other value's formatted text is escaped after.
    """
    out: list[str] = []
    for part in _parse(template):
        if isinstance(part, str):
            out.append(part)
            continue
        text = _field_text(template, part, values, escape)
        out.append(text if escape is None else escape(text))
    return "".join(out)


def _field_text(
    template: str,
    part: tuple[str, str, str],
    values: Mapping[str, Any],
    escape: Callable[[str], str] | None = None,
) -> str:
    """One field's value, converted and formatted (a string escaped before its format spec)."""
    name, conversion, spec = part
    try:
        value = values[name]
    except KeyError:
        raise TemplateError(name, sorted(values), template) from None
    if conversion:
        value = _CONVERSIONS[conversion](value)
    elif value is None:
        value = ""
    if escape is not None and isinstance(value, str):
        value = escape(value)
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise TemplateError(
            name, sorted(values), template, f"cannot format {value!r} with {spec!r}: {exc}"
        ) from None


def render_encoded(template: str, values: Mapping[str, Any], encode: Callable[[str], str]) -> str:
    """Fill ``template`` from ``values`` with ``encode`` applied once to each field's final text.

    Unlike ``escape`` in :func:`render_fields`, ``encode`` need not be idempotent: it sees each
    field's text once, after its conversion and format spec, and never the template's own text.
    That suits an encoding such as percent-encoding a URL component.
    """
    out: list[str] = []
    for part in _parse(template):
        out.append(part if isinstance(part, str) else encode(_field_text(template, part, values)))
    return "".join(out)


def literal_prefix(template: str) -> str:
    """The template's own text before its first field (all of it, if it has no field).

    ``{{`` and ``}}`` come back as single braces. Raises ``ValueError`` for a template that
    :func:`check` rejects.
    """
    check(template)
    prefix: list[str] = []
    for part in _parse(template):
        if not isinstance(part, str):
            break
        prefix.append(part)
    return "".join(prefix)
