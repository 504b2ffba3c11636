"""Pipeline files: a TOML description of inputs, rules and handlers, checked before anything runs.

Everything here runs in the parent process, before the dispatcher starts. A pipeline file that
is wrong in any way gives one :class:`PipelineError` naming the file, the table and key, and
what was expected; the command prints it and exits with status 2, never a traceback. Handler
tables are built and checked in :mod:`eventmp.pipeline_handlers`, single values in
:mod:`eventmp.pipeline_values`.

The file (read with the standard library's ``tomllib``)::

    [dispatcher]                    # optional; every key optional
    poll_interval = "250ms"         # numbers are seconds; strings may say ms, s, m, h
    workers = 2
    start_method = "forkserver"
    event_timeout = "30s"
    max_pending = 10000
    max_pending_bytes = "128MiB"
    max_events_per_worker = 10000
    max_memory_per_worker = "512MB"
    kill_grace = "1s"
    key = "{file}"                  # route equal keys to one worker, in order (default with
                                    # several workers: "{file}", per-file order)

    [error_handler]                 # optional: a handler run in this process for each failure
    type = "json"
    file = "failures.jsonl"

    [[inputs]]
    name = "auth"                   # default "input1", "input2", ...
    paths = ["/var/log/auth.log"]   # or path = "..."; glob patterns allowed (not a directory)
    missing_ok = false              # with --once, no file matching is an error (exit 1)
    start_at = "end"                # or "beginning" (the default with --once)
    encoding = "utf-8"
    max_line_bytes = "16KiB"        # longer lines are matched in pieces of this size
    state_file = "auth.state"       # checkpoints; relative paths are relative to this file

    [[rules]]
    name = "failed-password"
    inputs = ["auth"]               # default: every input
    regex = 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'
    exclude = 'invalid user'
    quick = true
    handlers = [                    # several handlers make a chain; `handler = ...` for one
      { type = "throttle", limit = 3, interval = "1m", key = "{ip}" },
      { type = "json", file = "alerts.jsonl" },
    ]

A handler is a short built-in name (``"print"``) or a table with ``type`` (a built-in name or
``"module:Class"``, imported with the pipeline file's directory on ``sys.path``) and the
handler's settings as keys. ``${NAME}`` in any string is replaced by
the environment variable ``NAME`` (``$$`` is a literal ``$``); an unset variable is an error.
The value is literal text: braces in it are doubled in a template setting, and an error shows
``${NAME}`` in its place.
Relative paths (inputs, ``state_file``, a built-in handler's ``file``) are relative to the
pipeline file. A ``print`` handler's ``format`` (``{ type = "print", format = "{time} {ip}" }``)
may name only fields its events have (the rule's groups, the tail's fields; see
:mod:`eventmp.templates`): another is an error here, not on every event.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .event import Event
from .handlers import ChainEventHandler
from .pipeline_handlers import TEMPLATE_SETTINGS, HandlerLoader, error_fields, tail_fields
from .pipeline_values import kind_of, literal
from .tail import DEFAULT_MAX_LINE_BYTES, STDIN, check_encoding
from .templates import Fields, render_fields

__all__ = ["InputSpec", "Pipeline", "PipelineError", "RuleSpec", "load_pipeline"]

_DISPATCHER_KEYS = {
    "poll_interval": "duration",
    "workers": "count",
    "start_method": "start_method",
    "event_timeout": "timeout",
    "max_pending": "count",
    "max_pending_bytes": "size",
    "max_events_per_worker": "count",
    "max_memory_per_worker": "size",
    "kill_grace": "duration",
    "start_timeout": "timeout",
    "idle_spin": "spin",
    "key": "template",
}
_INPUT_KEYS = {
    "name",
    "path",
    "paths",
    "start_at",
    "encoding",
    "state_file",
    "rescan_interval",
    "missing_ok",
    "max_line_bytes",
}
_RULE_KEYS = {"name", "inputs", "input", "regex", "exclude", "quick", "handler", "handlers"}
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Where a handler table stands in the document, as substitute() names places.
_HANDLER_PLACE = re.compile(r"error_handler|rules\[\d+\]\.(?:handler|handlers\[\d+\])")


@dataclass
class InputSpec:
    """One ``[[inputs]]`` table, checked."""

    name: str
    paths: list[str]
    start_at: str | None
    encoding: str
    state_file: str | None
    rescan_interval: float
    missing_ok: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass
class RuleSpec:
    """One ``[[rules]]`` table, checked, with its handler built."""

    name: str
    inputs: list[str]
    regex: re.Pattern[str]
    exclude: re.Pattern[str] | None
    quick: bool
    handler: Any


@dataclass
class Pipeline:
    """A checked pipeline file: dispatcher settings, inputs, rules and the error handler."""

    path: str
    dispatcher_options: dict[str, Any] = field(default_factory=dict)
    key_template: str | None = None
    error_handler: Any = None
    inputs: list[InputSpec] = field(default_factory=list)
    rules: list[RuleSpec] = field(default_factory=list)

    def rules_for(self, input_name: str) -> list[RuleSpec]:
        return [rule for rule in self.rules if input_name in rule.inputs]

    def key_function(self, workers: int) -> Callable[[Event], Hashable] | None:
        """The routing key: the file's template, or per-file order when there are workers."""
        template = self.key_template
        if template is None and workers > 1:
            template = "{file}"
        if not template:
            return None
        return _TemplateKey(template)


class _TemplateKey:
    """Routes an event by a template of its fields (runs in the parent, at acceptance, for
    every event: only the fields the template names are worked out)."""

    def __init__(self, template: str) -> None:
        self.template = template

    def __call__(self, event: Event) -> Hashable:
        return render_fields(self.template, Fields(event))


def load_pipeline(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Pipeline:
    """Read and check a pipeline file; raise :class:`PipelineError` on the first problem."""
    loader = _Loader(Path(path), os.environ if environ is None else environ)
    return loader.load()


class _Loader(HandlerLoader):
    """Reads a pipeline file: its tables in turn, with ``${NAME}`` substituted.

    The checks of handler tables come from :class:`~eventmp.pipeline_handlers.HandlerLoader`,
    those of single values and the errors that name their place from
    :class:`~eventmp.pipeline_values.ValueChecker`.
    """

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        super().__init__(path)
        self.environ = environ

    # -- the file -------------------------------------------------------------------------------

    def load(self) -> Pipeline:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise self.fail("", f"cannot read the pipeline file: {exc.strerror}") from None
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise self.fail("", f"not UTF-8 text (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise self.fail("", f"not valid TOML: {exc}") from None
        document = self.substitute(document, "")
        unknown = set(document) - {"dispatcher", "error_handler", "inputs", "rules"}
        if unknown:
            raise self.fail(
                _first(unknown),
                "unknown table or key (expected dispatcher, error_handler, inputs, rules)",
            )
        pipeline = Pipeline(str(self.path))
        self.load_dispatcher(pipeline, self.table(document, "dispatcher", "dispatcher"))
        if "error_handler" in document:
            pipeline.error_handler = self.handler(document["error_handler"], "error_handler")
            self.check_fields([pipeline.error_handler], ["error_handler"], error_fields())
        pipeline.inputs = [
            self.load_input(table, f"inputs[{n}]", n)
            for n, table in enumerate(self.array(document, "inputs"), 1)
        ]
        if not pipeline.inputs:
            raise self.fail("inputs", "at least one [[inputs]] table is required")
        names = [spec.name for spec in pipeline.inputs]
        for name in names:
            if names.count(name) > 1:
                raise self.fail("inputs", f"two inputs are named {name!r}")
        readers = [spec.name for spec in pipeline.inputs if spec.paths == [STDIN]]
        if len(readers) > 1:
            raise self.fail(
                "inputs", f"inputs {readers[0]!r} and {readers[1]!r} both read standard input ('-')"
            )
        pipeline.rules = [
            self.load_rule(table, f"rules[{n}]", n, names)
            for n, table in enumerate(self.array(document, "rules"), 1)
        ]
        if not pipeline.rules:
            raise self.fail("rules", "at least one [[rules]] table is required")
        return pipeline

    def substitute(self, value: Any, where: str, template: bool = False) -> Any:
        """Replace ``${NAME}`` in every string by the environment variable ``NAME``.

        The TOML is parsed first, so a value is never TOML. In a template setting
        (``template``) its braces are doubled: the value is literal text, never a field.
        """
        if isinstance(value, str):

            def replace(match: re.Match[str]) -> str:
                name = match.group(1)
                if name is None:
                    return "$"
                if name not in self.environ:
                    raise self.fail(where, f"environment variable {name} is not set")
                text = self.environ[name]
                self.substituted[name] = text
                return literal(text) if template else text

            return _ENV.sub(replace, value)
        if isinstance(value, dict):
            templates: set[str] = set()
            if where == "dispatcher":
                templates = {"key"}
            elif _HANDLER_PLACE.fullmatch(where) and isinstance(value.get("type"), str):
                templates = TEMPLATE_SETTINGS.get(value["type"], set())
            return {
                k: self.substitute(v, _join(where, k), template or k in templates)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.substitute(v, f"{where}[{n}]", template) for n, v in enumerate(value, 1)]
        return value

    def table(self, document: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = document.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {kind_of(value)}")
        return value

    def array(self, document: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = document.get(key, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"expected an array of tables ([[{key}]]), got {kind_of(value)}")
        return value

    # -- sections -------------------------------------------------------------------------------

    def load_dispatcher(self, pipeline: Pipeline, table: dict[str, Any]) -> None:
        for key, value in table.items():
            where = f"dispatcher.{key}"
            kind = _DISPATCHER_KEYS.get(key)
            if kind is None:
                raise self.fail(
                    where, f"unknown setting (expected one of {', '.join(_DISPATCHER_KEYS)})"
                )
            if kind == "template":
                pipeline.key_template = self.template(value, where)
                continue
            converted = self.convert(value, kind, where)
            if kind == "size" and converted < 1:
                raise self.fail(where, "expected a size of at least 1 byte")
            pipeline.dispatcher_options[key] = converted

    def load_input(self, table: dict[str, Any], where: str, number: int) -> InputSpec:
        self.no_unknown(table, _INPUT_KEYS, where)
        name = self.string(table.get("name", f"input{number}"), f"{where}.name")
        if "path" in table and "paths" in table:
            raise self.fail(where, "give either path or paths, not both")
        raw_paths = table.get("paths", table.get("path"))
        if raw_paths is None:
            raise self.fail(where, "missing required setting 'paths' (a file or glob, or a list)")
        key = "paths" if "paths" in table else "path"
        if isinstance(raw_paths, str):
            raw_paths = [raw_paths]
            places = [f"{where}.{key}"]
        elif not isinstance(raw_paths, list) or not raw_paths:
            raise self.fail(f"{where}.{key}", "expected a path or a non-empty list of paths")
        else:
            places = [f"{where}.{key}[{n}]" for n in range(1, len(raw_paths) + 1)]
        paths = [
            path if path == STDIN else self.relative(path)
            for path in (self.string(p, place) for p, place in zip(raw_paths, places, strict=True))
        ]
        if STDIN in paths and len(paths) > 1:
            raise self.fail(
                places[paths.index(STDIN)],
                "'-' (standard input) must be the only path of its input",
            )
        for path, place in zip(paths, places, strict=True):
            # A glob may match directories (skipped, as files come and go); a directory named
            # literally is a mistake: it would be followed as nothing.
            if glob.escape(path) == path and os.path.isdir(path):
                raise self.fail(
                    place,
                    f"{path} is a directory (to follow the files in it, give a pattern such as "
                    f"{os.path.join(path, '*.log')})",
                )
        start_at = table.get("start_at")
        if start_at is not None and start_at not in ("end", "beginning"):
            raise self.fail(f"{where}.start_at", f'expected "end" or "beginning", got {start_at!r}')
        encoding = self.string(table.get("encoding", "utf-8"), f"{where}.encoding")
        try:
            check_encoding(encoding)
        except ValueError as exc:
            raise self.fail(f"{where}.encoding", str(exc)) from None
        state_file = table.get("state_file")
        if state_file is not None and paths == [STDIN]:
            raise self.fail(
                f"{where}.state_file", "standard input has no checkpoint: remove state_file"
            )
        if state_file is not None:
            state_file = self.relative(self.string(state_file, f"{where}.state_file"))
        rescan = self.convert(
            table.get("rescan_interval", 1.0), "duration", f"{where}.rescan_interval"
        )
        missing_ok = self.convert(table.get("missing_ok", False), "bool", f"{where}.missing_ok")
        max_line_bytes = self.convert(
            table.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES), "size", f"{where}.max_line_bytes"
        )
        if max_line_bytes < 1:
            raise self.fail(f"{where}.max_line_bytes", "expected a size of at least 1 byte")
        return InputSpec(
            name, paths, start_at, encoding, state_file, rescan, missing_ok, max_line_bytes
        )

    def load_rule(
        self, table: dict[str, Any], where: str, number: int, input_names: list[str]
    ) -> RuleSpec:
        self.no_unknown(table, _RULE_KEYS, where)
        name = self.string(table.get("name", f"rule{number}"), f"{where}.name")
        where = f'{where} ("{name}")' if "name" in table else where
        if "regex" not in table:
            raise self.fail(where, "missing required setting 'regex'")
        regex = self.regex(table["regex"], f"{where}.regex")
        exclude = None
        if "exclude" in table:
            exclude = self.regex(table["exclude"], f"{where}.exclude")
        quick = self.convert(table.get("quick", False), "bool", f"{where}.quick")
        inputs_key = "inputs" if "inputs" in table else "input"
        wanted = table.get(inputs_key, input_names)
        if isinstance(wanted, str):
            wanted = [wanted]
        if not isinstance(wanted, list):
            raise self.fail(f"{where}.{inputs_key}", "expected an input name or a list of them")
        for input_name in wanted:
            if input_name not in input_names:
                raise self.fail(
                    f"{where}.{inputs_key}",
                    f"no input named {input_name!r} (inputs: {', '.join(input_names)})",
                )
        if "handler" in table and "handlers" in table:
            raise self.fail(where, "give either handler or handlers, not both")
        specs = table.get("handlers", table.get("handler"))
        if specs is None:
            raise self.fail(where, "missing required setting 'handlers'")
        key = "handlers" if "handlers" in table else "handler"
        if not isinstance(specs, list):
            specs = [specs]
        if not specs:
            raise self.fail(f"{where}.{key}", "expected at least one handler")
        places = [f"{where}.{key}[{n}]" for n in range(1, len(specs) + 1)]
        handlers = [self.handler(spec, place) for spec, place in zip(specs, places, strict=True)]
        self.check_fields(handlers, places, tail_fields(regex))
        handler = handlers[0] if len(handlers) == 1 else ChainEventHandler(*handlers)
        return RuleSpec(name, list(wanted), regex, exclude, quick, handler)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _first(keys: set[str]) -> str:
    return sorted(keys)[0]
