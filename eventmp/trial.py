"""``eventmp test``: try a pipeline's rules on sample lines or a log file, running no action.

Parent-side and pure but for reading the log file: what ``fail2ban-regex`` is to fail2ban.
For each sample line it says which rules match it, which were excluded (their ``exclude``
matched too) and which were skipped because a ``quick`` rule matched first, the groups, and
what each handler's templates render to for that line. Over a log file it counts, per rule,
the lines matched, excluded and skipped, the time spent in the rule's regular expressions, and
shows the first few matching lines.

The rules are applied as the tail applies them (:class:`~eventmp.tail.FileTailGenerator`):
search the regex, then the exclude, one event per matching rule, a ``quick`` match ends the
line; a line longer than its input's ``max_line_bytes`` is matched in pieces. Templates are
rendered with the same functions the handlers call, and every value shown is escaped
(:func:`~eventmp.templates.printable`): a sample line cannot move the terminal's cursor.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .actions import (
    CommandEventHandler,
    MailEventHandler,
    WebhookEventHandler,
    quote_component,
)
from .event import Event
from .handlers import ChainEventHandler, ExecEventHandler, describe_handler
from .pipeline import InputSpec, Pipeline, RuleSpec
from .pipeline_handlers import FIELD_LISTS, FIELD_SETTINGS
from .redact import redact_url
from .templates import fields, names, printable, render_fields

__all__ = ["FileReport", "Trial", "Verdict", "check_line"]

MATCHED = "matched"
EXCLUDED = "excluded"
SKIPPED = "skipped"
NO_MATCH = "no match"

# Shown lines are cut to this many characters: a 16 KiB line would bury the report.
_SHOWN = 300


@dataclass
class Verdict:
    """What one rule made of one line."""

    rule: RuleSpec
    status: str  # MATCHED, EXCLUDED, SKIPPED or NO_MATCH
    match: re.Match[str] | None = None
    excluded_by: re.Match[str] | None = None
    quick: str | None = None  # SKIPPED: the quick rule that matched first
    seconds: float = 0.0  # in this rule's regex and exclude


def check_line(rules: Sequence[RuleSpec], text: str, *, past_quick: bool = True) -> list[Verdict]:
    """Each rule's verdict on ``text``, in order.

    After a ``quick`` rule matched, the tail checks no further rule; with ``past_quick`` the
    later ones are still searched, so that a rule that would have matched says it was skipped
    (and one that would not says so), else they are all skipped unsearched, as in the tail.
    """
    verdicts = []
    quick: str | None = None
    for rule in rules:
        if quick is not None and not past_quick:
            verdicts.append(Verdict(rule, SKIPPED, quick=quick))
            continue
        start = time.perf_counter()
        match = rule.regex.search(text)
        excluded = None
        if match is not None and rule.exclude is not None:
            excluded = rule.exclude.search(text)
        seconds = time.perf_counter() - start
        if match is None:
            status = NO_MATCH
        elif quick is not None:
            status = SKIPPED
        elif excluded is not None:
            status = EXCLUDED
        else:
            status = MATCHED
            if rule.quick:
                quick = rule.name
        skipped_by = quick if status == SKIPPED else None
        verdicts.append(Verdict(rule, status, match, excluded, skipped_by, seconds))
    return verdicts


def pieces(raw: bytes, spec: InputSpec | None) -> list[str]:
    """A line's bytes as the tail matches them: decoded whole, or cut into pieces of
    ``max_line_bytes`` bytes first (a cut may split a character, whose bytes are replaced)."""
    encoding = spec.encoding if spec is not None else "utf-8"
    size = spec.max_line_bytes if spec is not None else len(raw) or 1
    if len(raw) <= size:
        return [raw.decode(encoding, "replace")]
    return [raw[at : at + size].decode(encoding, "replace") for at in range(0, len(raw), size)]


def event_for(
    rule: RuleSpec, match: re.Match[str], text: str, *, input_name: str, file: str, number: int
) -> Event:
    """The event the tail would make: the same data keys
    (:func:`~eventmp.pipeline_handlers.tail_fields` lists them too)."""
    data = {
        "input": input_name,
        "file": file,
        "line_number": number,
        "line": text,
        "rule": rule.name,
        "match": match.group(0),
        "groups": list(match.groups()),
        "named": match.groupdict(),
    }
    return Event(f"tail:{input_name}", rule.handler, data)


def rendered(handler: Any, event: Event) -> list[str]:
    """What each link of ``handler`` fills its templates with for ``event``, one line each.

    Nothing runs: the mail is built but not sent, the argv made but not executed.
    """
    from .actions import BUILTIN_HANDLERS

    types = {cls: name for name, cls in BUILTIN_HANDLERS.items()}
    links = handler.handlers if isinstance(handler, ChainEventHandler) else [handler]
    values = fields(event)
    out = []
    for number, link in enumerate(links, 1):
        type_name = types.get(type(link))
        place = f"handler[{number}] {type_name or describe_handler(link)}"
        if type_name is None or isinstance(link, ExecEventHandler):
            out.append(f"{place}: runs code, not run here")
            continue
        shown = []
        for setting in FIELD_SETTINGS.get(type_name, ()):
            value = getattr(link, setting, None)
            if value is None or (setting in FIELD_LISTS and not value):
                continue
            try:
                shown.append(f"{setting} = {_setting(link, setting, value, event, values)}")
            except Exception as exc:
                shown.append(f"{setting}: {type(exc).__name__}: {printable(str(exc))}")
        out.append(f"{place}: " + ("; ".join(shown) if shown else "no templates"))
    return out


def _setting(handler: Any, setting: str, value: Any, event: Event, values: dict[str, Any]) -> str:
    if setting in FIELD_LISTS:
        return ", ".join(f"{name}={_cut(_value(values[name]))}" for name in value)
    if isinstance(handler, CommandEventHandler) and setting == "argv":
        return shlex.join(printable(arg) for arg in handler.arguments(values))
    if isinstance(handler, WebhookEventHandler):
        # The URL's own text may hold a secret: shown redacted, and each field as sent.
        encoded = ", ".join(
            f"{name}={quote_component(str(values[name] or ''))}" for name in names(value)
        )
        return f"{redact_url(value)} with {encoded or 'no fields'}"
    if isinstance(handler, MailEventHandler):
        message = handler.message(event)
        text = str(message["Subject"]) if setting == "subject" else message.get_content()
        return _quoted(text.rstrip("\n"))
    return _quoted(render_fields(value, values))


def _quoted(text: str) -> str:
    """Escaped text in quotes, cut if long (not ``repr()``: a backslash shows once)."""
    return f"'{_cut(text)}'"


def _value(value: Any) -> str:
    return "" if value is None else str(value)


def _cut(text: str) -> str:
    """``text`` escaped (:func:`~eventmp.templates.printable`) and cut to a screen's worth."""
    shown = printable(text)
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "..."


# == the command =================================================================================


@dataclass
class RuleReport:
    """One rule over a log file."""

    matches: int = 0
    excluded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)


@dataclass
class FileReport:
    """A log file: its lines, how many matched any rule, and each rule's figures."""

    path: str
    lines: int = 0
    bytes: int = 0
    matched: int = 0
    seconds: float = 0.0
    rules: dict[str, RuleReport] = field(default_factory=dict)


class Trial:
    """``eventmp test`` over one pipeline; each method returns its report's lines."""

    def __init__(self, pipeline: Pipeline, input_name: str | None = None) -> None:
        self.pipeline = pipeline
        self.input_name = input_name
        self.matched_any = False
        if input_name is not None:
            specs = {spec.name: spec for spec in pipeline.inputs}
            if input_name not in specs:
                raise ValueError(f"no input named {input_name!r} (inputs: {', '.join(specs)})")

    def _choose(self, file: str | None = None) -> tuple[InputSpec | None, list[RuleSpec]]:
        """The input whose rules apply: ``--input``, the one whose paths match ``file``, the
        only one; else every rule in file order, with no input's settings."""
        pipeline = self.pipeline
        wanted = self.input_name
        if wanted is None and file is not None:
            where = os.path.abspath(file)
            found = [
                spec.name
                for spec in pipeline.inputs
                if any(fnmatch.fnmatch(where, os.path.abspath(p)) for p in spec.paths)
            ]
            wanted = found[0] if len(found) == 1 else None
        if wanted is None and len(pipeline.inputs) == 1:
            wanted = pipeline.inputs[0].name
        if wanted is None:
            return None, list(pipeline.rules)
        spec = next(spec for spec in pipeline.inputs if spec.name == wanted)
        return spec, pipeline.rules_for(wanted)

    def lines(self, texts: Iterable[str]) -> Iterator[str]:
        """The report on sample lines: each rule's verdict, groups and rendered templates."""
        spec, rules = self._choose()
        if spec is None:
            yield "(every rule, in file order; --input NAME tries one input's rules)"
        name = spec.name if spec is not None else "test"
        for number, text in enumerate(texts, 1):
            encoding = spec.encoding if spec is not None else "utf-8"
            parts = pieces(text.encode(encoding, "replace"), spec)
            for part_number, part in enumerate(parts, 1):
                piece = f" (piece {part_number} of {len(parts)})" if len(parts) > 1 else ""
                yield f"line {number}{piece}: {_cut(part)}"
                yield from self._verdicts(rules, part, name, number)

    def _verdicts(self, rules: list[RuleSpec], text: str, name: str, number: int) -> Iterator[str]:
        for verdict in check_line(rules, text):
            rule, match = verdict.rule, verdict.match
            if verdict.status == NO_MATCH:
                yield f"  rule {rule.name}: no match"
            elif verdict.status == SKIPPED:
                yield f"  rule {rule.name}: skipped (quick rule {verdict.quick} matched first)"
            elif verdict.status == EXCLUDED and verdict.excluded_by is not None:
                yield (
                    f"  rule {rule.name}: excluded (exclude matched "
                    f"{_quoted(verdict.excluded_by.group(0))})"
                )
            elif match is not None:
                self.matched_any = True
                yield f"  rule {rule.name}: matched {_quoted(match.group(0))}"
                yield f"    groups: {_groups(match)}"
                event = event_for(rule, match, text, input_name=name, file="-", number=number)
                for line in rendered(rule.handler, event):
                    yield f"    {line}"

    def file(self, path: str, samples: int = 3) -> Iterator[str]:
        """The report on a log file: per rule, hits, time in its regexes, first matches."""
        spec, rules = self._choose(path)
        report = FileReport(path, rules={rule.name: RuleReport() for rule in rules})
        start = time.perf_counter()
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                report.lines += 1
                report.bytes += len(raw)
                hit = False
                for part in pieces(raw.rstrip(b"\n").removesuffix(b"\r"), spec):
                    for verdict in check_line(rules, part, past_quick=False):
                        figures = report.rules[verdict.rule.name]
                        figures.seconds += verdict.seconds
                        if verdict.status == MATCHED:
                            hit = True
                            figures.matches += 1
                            if len(figures.samples) < samples:
                                figures.samples.append(f"{path}:{number}: {_cut(part)}")
                        elif verdict.status == EXCLUDED:
                            figures.excluded += 1
                        elif verdict.status == SKIPPED:
                            figures.skipped += 1
                report.matched += hit
        report.seconds = time.perf_counter() - start
        self.matched_any = self.matched_any or report.matched > 0
        return _file_lines(report, spec)


def _groups(match: re.Match[str]) -> str:
    numbered = [f"{n}={_group(g)}" for n, g in enumerate(match.groups(), 1)]
    named = [f"{name}={_group(g)}" for name, g in match.groupdict().items()]
    return " ".join(numbered + named) or "(none)"


def _group(value: str | None) -> str:
    return "(not in the match)" if value is None else _quoted(value)


def _file_lines(report: FileReport, spec: InputSpec | None) -> Iterator[str]:
    which = f"input {spec.name}'s rules" if spec is not None else "every rule"
    yield (
        f"{report.path}: {report.lines:,} lines ({report.bytes / 1e6:,.1f} MB) in "
        f"{report.seconds:,.2f} s, {which}: {report.matched:,} matched a rule, "
        f"{report.lines - report.matched:,} none"
    )
    for name, figures in report.rules.items():
        per_line = figures.seconds / report.lines * 1e6 if report.lines else 0.0
        yield (
            f"  rule {name}: {figures.matches:,} matched, {figures.excluded:,} excluded, "
            f"{figures.skipped:,} skipped by a quick rule; {figures.seconds:,.3f} s in its "
            f"regexes ({per_line:,.1f} us a line)"
        )
        for sample in figures.samples:
            yield f"    {sample}"
