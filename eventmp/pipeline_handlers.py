"""A pipeline file's handlers: each built from its table, and the event fields its settings name
checked against those the events will have.

Runs in the parent process, before the dispatcher starts: :class:`HandlerLoader` is the part of
the loader behind :func:`~eventmp.pipeline.load_pipeline` that reads handler tables. A built-in
handler's relative ``file`` or ``cwd`` is made relative to the pipeline file; a ``module:Class``
handler is imported with the pipeline file's directory at the end of ``sys.path``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from typing import Any

from .errors import EventmpError
from .event import Event
from .handlers import ExecEventHandler
from .pipeline_values import ValueChecker, kind_of

__all__ = [
    "FIELD_LISTS",
    "FIELD_SETTINGS",
    "TEMPLATE_SETTINGS",
    "HandlerLoader",
    "error_fields",
    "tail_fields",
]

# The settings of the built-in handlers that are templates (as the dispatcher's key is): a
# value substituted from ${NAME} into one has its braces doubled, so it is text, never a field.
TEMPLATE_SETTINGS = {
    "print": {"format"},
    "command": {"argv"},
    "webhook": {"url"},
    "mail": {"subject", "body"},
    "count": {"key"},
    "throttle": {"key"},
}
# The settings of the built-in handlers that name event fields, checked against the fields a
# rule's events have: templates, lists of templates (argv), and lists of names (FIELD_LISTS).
FIELD_SETTINGS = {
    "print": ("format",),
    "json": ("fields",),
    "command": ("argv", "env_fields"),
    "webhook": ("url",),
    "mail": ("subject", "body"),
    "count": ("key",),
    "throttle": ("key",),
}
FIELD_LISTS = {"fields", "env_fields"}


class HandlerLoader(ValueChecker):
    """Builds the handlers of a pipeline file's tables and checks the fields they name."""

    def handler(self, spec: Any, where: str) -> Any:
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise self.fail(where, f"expected a handler name or table, got {kind_of(spec)}")
        settings = dict(spec)
        type_name = settings.pop("type", None)
        if not isinstance(type_name, str):
            raise self.fail(
                where, "missing required setting 'type' (a handler name or module:Class)"
            )
        cls = self.handler_class(type_name, f"{where}.type")
        if ":" not in type_name:
            # Built-in handlers use `file` and `cwd` in the worker, whose working directory is
            # not the pipeline's: a relative path means next to the pipeline file, like inputs.
            for key in ("file", "cwd"):
                value = settings.get(key)
                if isinstance(value, str) and value not in ("stdout", "stderr"):
                    settings[key] = self.relative(value)
        try:
            signature = inspect.signature(cls)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            accepts_any = any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
            )
            # Keyword-only parameters are for code (a test's clock, say), not pipeline files.
            accepted = [
                p.name
                for p in signature.parameters.values()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            ]
            for key in settings:
                if not accepts_any and key not in accepted:
                    raise self.fail(
                        f"{where}.{key}",
                        f"unknown setting for handler {type_name!r} "
                        f"(accepted: {', '.join(accepted) or 'none'})",
                    )
            try:
                signature.bind(**settings)
            except TypeError as exc:
                missing = re.search(r"missing a required argument: '(\w+)'", str(exc))
                if missing:
                    raise self.fail(
                        where, f"missing required setting {missing.group(1)!r} for {type_name!r}"
                    ) from None
                raise self.fail(where, f"bad settings for {type_name!r}: {exc}") from None
        try:
            return cls(**settings)
        except SyntaxError as exc:
            # Only code has syntax: exec's command (the one setting that holds code).
            key = f"{where}.command" if "command" in settings else where
            raise self.fail(key, f"handler {type_name!r}: {exc}") from None
        except (TypeError, ValueError, re.error, EventmpError) as exc:
            raise self.fail(where, f"handler {type_name!r}: {exc}") from None

    def handler_class(self, type_name: str, where: str) -> Any:
        if ":" in type_name:
            module_name, _, attribute = type_name.partition(":")
            # A module next to the pipeline file can hold the user's handlers; the workers
            # inherit this sys.path. At its end, never in front of installed packages: a
            # psutil.py or json.py left beside the pipeline must not replace the real one in
            # eventmp's own process or its workers.
            directory = str(self.path.parent.resolve())
            if directory not in sys.path:
                sys.path.append(directory)
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise self.fail(where, f"cannot import {module_name!r}: {exc}") from None
            cls = getattr(module, attribute, None)
            if cls is None:
                raise self.fail(where, f"module {module_name!r} has no {attribute!r}")
            if not callable(cls):
                raise self.fail(where, f"{type_name!r} is not a class or callable")
            return cls
        builtins = _builtin_handlers()
        if type_name not in builtins:
            raise self.fail(
                where,
                f"unknown handler type {type_name!r} (built-in: {', '.join(sorted(builtins))}; "
                "or module:Class)",
            )
        return builtins[type_name]

    def check_fields(self, handlers: list[Any], places: list[str], available: list[str]) -> None:
        """Every field a built-in handler's templates and field lists name must exist.

        The fields are known before anything runs: those of a rule's events follow from its
        regex, those of an error event are fixed. A template naming another field would fail
        every event at run time. An ``exec`` handler or one of the user's own earlier in a
        chain may add fields to the event it is given, so the check stops there.
        """
        from .templates import names

        builtins = {cls: type_name for type_name, cls in _builtin_handlers().items()}
        for handler, place in zip(handlers, places, strict=True):
            type_name = builtins.get(type(handler))
            if type_name is None or isinstance(handler, ExecEventHandler):
                return
            for setting in FIELD_SETTINGS.get(type_name, ()):
                value = getattr(handler, setting, None)
                if value is None:
                    continue
                # (where, the field named, the template naming it or None for a list of names)
                used: list[tuple[str, str, str | None]]
                if setting in FIELD_LISTS:
                    used = [(f"{place}.{setting}", name, None) for name in value]
                elif isinstance(value, str):
                    used = [(f"{place}.{setting}", name, value) for name in names(value)]
                else:  # a list of templates: command's argv
                    used = [
                        (f"{place}.{setting}[{n}]", name, template)
                        for n, template in enumerate(value, 1)
                        for name in names(template)
                    ]
                for where, name, template in used:
                    if name not in available:
                        named = "names" if template is None else f"{template!r} names"
                        what = "the list" if template is None else "the template"
                        raise self.fail(
                            where,
                            f"{what} {named} {{{name}}}, a field these events do not have; "
                            f"available: {', '.join(available)}",
                        )


def _builtin_handlers() -> dict[str, Any]:
    from .actions import BUILTIN_HANDLERS

    return dict(BUILTIN_HANDLERS)


def tail_fields(regex: re.Pattern[str]) -> list[str]:
    """The template fields of the events a log tail makes for a rule with ``regex``.

    The data's keys are those :class:`~eventmp.tail.FileTailGenerator` gives its events (a test
    holds the two together); :func:`~eventmp.templates.fields` adds the rest.
    """
    from .templates import fields

    data = {
        "input": "",
        "file": "",
        "line_number": 0,
        "line": "",
        "rule": "",
        "match": "",
        "groups": [None] * regex.groups,
        "named": dict.fromkeys(regex.groupindex),
    }
    return _in_order(fields(Event("", None, data)))


def _in_order(names: Mapping[str, Any]) -> list[str]:
    """Field names sorted for a message: words first, then group numbers in numeric order."""

    def key(name: str) -> tuple[bool, int, str]:
        return (name.isdigit(), len(name) if name.isdigit() else 0, name)

    return sorted(names, key=key)


def error_fields() -> list[str]:
    """The template fields of the error events an error handler is given."""
    from .templates import fields

    return _in_order(fields(Event("", None, (None, None))))
