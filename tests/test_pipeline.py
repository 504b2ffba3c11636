"""Pipeline files: every mistake is one clear message naming the file and key."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from eventmp import ChainEventHandler, PrintEventHandler
from eventmp.pipeline import Pipeline, PipelineError, load_pipeline

GOOD = """
[dispatcher]
poll_interval = "250ms"
workers = 2
event_timeout = 30
idle_spin = "0.5ms"
max_memory_per_worker = "512MB"

[[inputs]]
name = "auth"
paths = ["auth.log", "more/*.log"]
state_file = "auth.state"

[[inputs]]
path = "/var/log/other.log"
start_at = "beginning"

[[rules]]
name = "failed"
inputs = ["auth"]
regex = 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'
exclude = "invalid user"
quick = "true"
handlers = ["print", { type = "json", file = "${OUT_DIR}/alerts.jsonl" }]

[[rules]]
regex = "error"
handler = "print"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **environ: str) -> Pipeline:
    return load_pipeline(write(tmp_path, text), environ={"OUT_DIR": "/tmp/out", **environ})


def error_of(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(PipelineError) as info:
        load(tmp_path, text, **environ)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "pipeline.toml") + ": ")
    assert "Traceback" not in message
    return message


def test_a_good_pipeline_loads_every_setting(tmp_path: Path) -> None:
    """A complete pipeline file yields its dispatcher settings, inputs, rules and handlers."""
    pipeline = load(tmp_path, GOOD)
    assert pipeline.dispatcher_options == {
        "poll_interval": 0.25,
        "workers": 2,
        "event_timeout": 30.0,
        "idle_spin": 0.0005,
        "max_memory_per_worker": 512 << 20,
    }
    auth, other = pipeline.inputs
    assert auth.name == "auth"
    assert auth.paths == [str(tmp_path / "auth.log"), str(tmp_path / "more/*.log")]
    assert auth.state_file == str(tmp_path / "auth.state")
    assert auth.start_at is None
    assert (other.name, other.paths, other.start_at) == (
        "input2",
        ["/var/log/other.log"],
        "beginning",
    )
    failed, second = pipeline.rules
    assert failed.inputs == ["auth"]
    assert failed.quick is True
    assert failed.exclude is not None and failed.exclude.pattern == "invalid user"
    assert isinstance(failed.handler, ChainEventHandler)
    assert isinstance(failed.handler.handlers[0], PrintEventHandler)
    assert failed.handler.handlers[1].file == "/tmp/out/alerts.jsonl"
    assert second.name == "rule2"
    assert second.inputs == ["auth", "input2"]
    assert [rule.name for rule in pipeline.rules_for("input2")] == ["rule2"]


def test_several_workers_route_by_file_by_default(tmp_path: Path) -> None:
    """With several workers and no key, events are routed by their file (per-file order)."""
    pipeline = load(tmp_path, GOOD)
    key = pipeline.key_function(2)
    assert key is not None
    assert pipeline.key_function(1) is None


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[[rules]]\nregex='x'\nhandler='print'\n", "inputs", "at least one [[inputs]]"),
        ("[[inputs]]\npath='a.log'\n", "rules", "at least one [[rules]]"),
        ("[[inputs]]\nname='a'\n[[rules]]\nregex='x'\nhandler='print'\n", "inputs[1]", "'paths'"),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='nope'\n",
            "rules[1].handler[1].type",
            "unknown handler type 'nope'",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={type='webhook'}\n",
            "rules[1].handler[1]",
            "missing required setting 'url'",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={type='json', colour='red'}\n",
            "rules[1].handler[1].colour",
            "unknown setting for handler 'json'",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nname='r'\nregex='(ab'\nhandler='print'\n",
            'rules[1] ("r").regex',
            "bad regular expression at position 0: missing ), unterminated subpattern",
        ),
        (
            "[dispatcher]\nworkers='many'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.workers",
            "expected a whole number >= 1, got 'many'",
        ),
        (
            "[dispatcher]\nevent_timeout='soon'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.event_timeout",
            "expected a number of seconds",
        ),
        (
            "[dispatcher]\nspeed=3\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.speed",
            "unknown setting",
        ),
        (
            "[dispatcher]\nidle_spin='50ms'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.idle_spin",
            "expected a number of seconds up to 0.01",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\ninputs=['b']\nhandler='print'\n",
            "rules[1].inputs",
            "no input named 'b'",
        ),
        (
            "[[inputs]]\npath='a.log'\nstart_at='middle'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].start_at",
            'expected "end" or "beginning"',
        ),
        (
            "[[inputs]]\npath='a.log'\nencoding='klingon'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].encoding",
            "unknown encoding 'klingon'",
        ),
        (
            "[[inputs]]\npath='a.log'\nencoding='utf-16'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].encoding",
            "does not write a newline as the byte 0x0A",
        ),
        (
            "[[inputs]]\npath='a.log'\nmax_line_bytes=0\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].max_line_bytes",
            "expected a size of at least 1 byte",
        ),
        (
            "[[inputs]]\npaths=['a.log', '-']\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].paths[2]",
            "'-' (standard input) must be the only path of its input",
        ),
        (
            "[[inputs]]\npath='-'\nstate_file='x.state'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].state_file",
            "standard input has no checkpoint",
        ),
        (
            "[[inputs]]\nname='a'\npath='-'\n[[inputs]]\nname='b'\npath='-'\n[[rules]]\n"
            "regex='x'\nhandler='print'\n",
            "inputs",
            "inputs 'a' and 'b' both read standard input ('-')",
        ),
        (
            "[dispatcher]\nmax_pending_bytes=0\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\n"
            "handler='print'\n",
            "dispatcher.max_pending_bytes",
            "expected a size of at least 1 byte",
        ),
        (
            "[dispatcher]\nmax_pending_bytes='lots'\n[[inputs]]\npath='a.log'\n[[rules]]\n"
            "regex='x'\nhandler='print'\n",
            "dispatcher.max_pending_bytes",
            "expected a number of bytes or a string such as '512MB'",
        ),
        (
            "[dispatcher]\nevent_timeout=0\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.event_timeout",
            "expected a number of seconds > 0",
        ),
        (
            "[dispatcher]\nstart_timeout='0s'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.start_timeout",
            "expected a number of seconds > 0",
        ),
        (
            "[[inputs]]\npath='${NOPE}/a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].path",
            "environment variable NOPE is not set",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={type='exec', command='if'}\n",
            "rules[1].handler[1].command",
            "handler 'exec'",
        ),
        (
            "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={type='nosuchmodule:Thing'}\n",
            "rules[1].handler[1].type",
            "cannot import 'nosuchmodule'",
        ),
        ("[[inputs]\npath='a.log'\n", "", "not valid TOML"),
        ("[colours]\nred=1\n", "colours", "unknown table or key"),
    ],
)
def test_bad_pipelines_name_file_key_and_expectation(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    """Each mistake gives one PipelineError naming the file, the table/key and what was expected."""
    message = error_of(tmp_path, text)
    if where:
        assert f": {where}: " in message, message
    assert what in message, message


@pytest.mark.parametrize(
    ("paths", "where"),
    [("paths = ['a.log', 'logs']", "inputs[1].paths[2]"), ("path = 'logs'", "inputs[1].path")],
)
def test_a_directory_named_in_paths_is_an_error(tmp_path: Path, paths: str, where: str) -> None:
    """A directory given literally in paths is an error naming the key and the directory."""
    (tmp_path / "logs").mkdir()
    message = error_of(tmp_path, f"[[inputs]]\n{paths}\n[[rules]]\nregex='x'\nhandler='print'\n")
    assert f": {where}: {tmp_path / 'logs'} is a directory (" in message, message
    assert os.path.join(tmp_path / "logs", "*.log") in message


def test_a_glob_matching_a_directory_is_no_error(tmp_path: Path) -> None:
    """A glob that matches a directory loads (the tail skips it), and missing_ok is read."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "dir.log").mkdir()
    text = "[[inputs]]\npaths=['*', 'logs/*']\nmissing_ok=true\n"
    text += "[[rules]]\nregex='x'\nhandler='print'\n"
    (spec,) = load(tmp_path, text).inputs
    assert spec.paths == [str(tmp_path / "*"), str(tmp_path / "logs/*")]
    assert spec.missing_ok is True


def test_missing_ok_is_false_by_default_and_must_be_a_boolean(tmp_path: Path) -> None:
    """An input's missing_ok defaults to false; a value that is not a boolean is an error."""
    assert load(tmp_path, GOOD).inputs[0].missing_ok is False
    text = "[[inputs]]\npath='a.log'\nmissing_ok='maybe'\n[[rules]]\nregex='x'\nhandler='print'\n"
    message = error_of(tmp_path, text)
    assert ": inputs[1].missing_ok: expected true or false, got 'maybe'" in message, message


def test_max_line_bytes_defaults_to_16_kib_and_takes_a_size(tmp_path: Path) -> None:
    """An input's max_line_bytes defaults to 16 KiB and accepts a size such as '64KiB'."""
    assert load(tmp_path, GOOD).inputs[0].max_line_bytes == 16 << 10
    text = "[[inputs]]\npath='a.log'\nmax_line_bytes='64KiB'\n"
    text += "[[rules]]\nregex='x'\nhandler='print'\n"
    assert load(tmp_path, text).inputs[0].max_line_bytes == 64 << 10


def test_missing_file_is_a_pipeline_error(tmp_path: Path) -> None:
    """A pipeline file that does not exist is reported as such, naming it."""
    with pytest.raises(PipelineError, match=re.escape(str(tmp_path / "nope.toml"))):
        load_pipeline(tmp_path / "nope.toml")


def test_environment_substitution_and_dollar_escape(tmp_path: Path) -> None:
    """${NAME} is replaced from the environment and $$ stands for a literal dollar sign."""
    pipeline = load(
        tmp_path,
        "[[inputs]]\npath='${LOGS}/a.log'\n[[rules]]\nregex='cost: $$5'\nhandler='print'\n",
        LOGS="/srv/logs",
    )
    assert pipeline.inputs[0].paths == ["/srv/logs/a.log"]
    assert pipeline.rules[0].regex.pattern == "cost: $5"


def test_module_class_handlers_load_from_the_pipeline_directory(tmp_path: Path) -> None:
    """A module:Class handler is imported with the pipeline file's directory on sys.path."""
    (tmp_path / "my_pipeline_handlers.py").write_text(
        "class Shout:\n"
        "    def __init__(self, word='hey'):\n"
        "        self.word = word\n"
        "    def process_event(self, event):\n"
        "        return True\n"
    )
    pipeline = load(
        tmp_path,
        "[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\n"
        "handler={type='my_pipeline_handlers:Shout', word='ho'}\n",
    )
    assert type(pipeline.rules[0].handler).__name__ == "Shout"
    assert pipeline.rules[0].handler.word == "ho"


@pytest.mark.parametrize(
    ("handler", "where", "what"),
    [
        (
            "{type='mail', to='a@b', subject='alert {ip.__class__}'}",
            "rules[1].handler[1]",
            "attribute access in {ip.__class__} is not allowed",
        ),
        ("{type='count', count='three'}", "rules[1].handler[1]", "expected a whole number"),
    ],
)
def test_bad_handler_settings_name_the_setting(
    tmp_path: Path, handler: str, where: str, what: str
) -> None:
    """A template that tries to run code, or a setting that is not a number, is named."""
    message = error_of(
        tmp_path, f"[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={handler}\n"
    )
    assert f": {where}: " in message and what in message, message


def test_bad_routing_key_template(tmp_path: Path) -> None:
    """A routing key template with an unclosed brace gives its position."""
    message = error_of(
        tmp_path,
        "[dispatcher]\nkey='{file'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
    )
    assert ": dispatcher.key: bad template '{file' at position 0" in message


# == print's format: its fields are checked against the events' =================================

SSH = (
    "[[inputs]]\npath='a.log'\n"
    "[[rules]]\nname='ssh'\nregex='for (?P<user>\\S+) from (?P<ip>\\S+)'\n"
)


def test_print_format_with_known_fields_loads(tmp_path: Path) -> None:
    """A print format naming the rule's groups and the tail's fields loads as written."""
    pipeline = load(
        tmp_path,
        SSH + "handler={type='print', format='{time} {ip} {user} {file}:{line_number} {2}'}\n",
    )
    handler = pipeline.rules[0].handler
    assert isinstance(handler, PrintEventHandler)
    assert handler.format == "{time} {ip} {user} {file}:{line_number} {2}"


@pytest.mark.parametrize(
    ("handler", "where", "what"),
    [
        (
            "{type='print', format='{time} {ipaddr}'}",
            'rules[1] ("ssh").handler[1].format',
            "names {ipaddr}, a field these events do not have; available: file, groups, "
            "input, ip, line, line_number, match, named, originator, rule, time, timestamp, "
            "user, 0, 1, 2",
        ),
        (
            "{type='print', format='{3}'}",
            'rules[1] ("ssh").handler[1].format',
            "names {3}, a field these events do not have",
        ),
        (
            "[{type='count', count=2}, {type='print', format='{data}'}]",
            'rules[1] ("ssh").handlers[2].format',
            "names {data}, a field these events do not have",
        ),
        (
            "{type='print', format='{time} {ip'}",
            'rules[1] ("ssh").handler[1]',
            "handler 'print': PrintEventHandler: setting 'format': bad template '{time} {ip' "
            "at position 7: '{' is never closed",
        ),
        (
            "{type='print', format='{ip.__class__}'}",
            'rules[1] ("ssh").handler[1]',
            "attribute access in {ip.__class__} is not allowed",
        ),
    ],
)
def test_bad_print_format_names_file_key_and_problem(
    tmp_path: Path, handler: str, where: str, what: str
) -> None:
    """A print format with a field the rule's events lack, or a bad template, is one clear error."""
    key = "handlers" if handler.startswith("[") else "handler"
    message = error_of(tmp_path, SSH + f"{key}={handler}\n")
    assert f": {where}: " in message and what in message, message


def test_error_handler_print_format_is_checked_against_error_events(tmp_path: Path) -> None:
    """An error handler's print format may use the error event's fields, and only those."""
    good = "[error_handler]\ntype='print'\nformat='{time} {originator}: {data!r}'\n"
    assert load(tmp_path, good + SSH + "handler='print'\n").error_handler is not None
    message = error_of(
        tmp_path, "[error_handler]\ntype='print'\nformat='{ip}'\n" + SSH + "handler='print'\n"
    )
    assert ": error_handler.format: " in message
    assert "available: data, originator, time, timestamp" in message


@pytest.mark.parametrize(
    "first",
    [
        "'my_enricher:Enrich'",
        '{type=\'exec\', command=\'event.data["named"]["country"] = "NL"\'}',
    ],
    ids=["module:Class", "exec"],
)
def test_a_handler_that_may_add_fields_stops_the_field_check(tmp_path: Path, first: str) -> None:
    """An exec or module:Class handler may add fields to the event: later formats pass."""
    (tmp_path / "my_enricher.py").write_text(
        "class Enrich:\n"
        "    def process_event(self, event):\n"
        "        event.data['named']['country'] = 'NL'\n"
        "        return True\n"
    )
    pipeline = load(
        tmp_path, SSH + f"handlers=[{first}, {{type='print', format='{{ip}} {{country}}'}}]\n"
    )
    assert isinstance(pipeline.rules[0].handler, ChainEventHandler)


def test_checked_fields_are_those_of_a_real_tail_event(tmp_path: Path) -> None:
    """The fields the check allows are exactly those a FileTailGenerator's event offers."""
    from eventmp.pipeline import _tail_fields
    from eventmp.tail import FileTailGenerator, Rule
    from eventmp.templates import fields

    regex = re.compile(r"for (?P<user>\S+) from (?P<ip>\S+)( port (\d+))?")
    log = tmp_path / "auth.log"
    log.write_text("Failed password for root from 203.0.113.9 port 22\n")
    tail = FileTailGenerator(
        [str(log)], [Rule("ssh", regex, "print")], start_at="beginning", once=True
    )
    try:
        events = tail.get_events()
    finally:
        tail.stop()
    assert len(events) == 1
    assert sorted(_tail_fields(regex)) == sorted(fields(events[0]))


SECRET_FORMAT = """
[[inputs]]
path = "a.log"
[[rules]]
regex = '(?P<user>\\w+)'
handlers = [{ type = "print", format = "${TOKEN} {user}" }]
"""


@pytest.mark.parametrize("token", ["a{line}b", "x{", "}{{}"])
def test_a_substituted_value_is_literal_text_in_a_template(tmp_path: Path, token: str) -> None:
    """A ${NAME} value holding braces loads, and renders as itself, never as a field."""
    from eventmp.templates import render_fields

    pipeline = load(tmp_path, SECRET_FORMAT, TOKEN=token)
    handler = pipeline.rules[0].handler
    assert isinstance(handler, PrintEventHandler) and handler.format is not None
    assert render_fields(handler.format, {"user": "root", "line": "L"}) == f"{token} root"


def test_a_substituted_value_stays_as_it_is_outside_templates(tmp_path: Path) -> None:
    """Braces are doubled only in template settings: a command's env value keeps its text."""
    text = """
    [[inputs]]
    path = "a.log"
    [[rules]]
    regex = 'x'
    handler = { type = "command", argv = ["echo", "${TOKEN}"], env = { T = "${TOKEN}" } }
    """
    handler = load(tmp_path, text, TOKEN="p{w}").rules[0].handler
    assert handler.env == {"T": "p{w}"}
    assert handler.arguments({}) == ["echo", "p{w}"]


def test_an_error_names_the_variable_never_its_value(tmp_path: Path) -> None:
    """A value that still makes loading fail is named as ${TOKEN} in the error, never shown."""
    text = """
    [[inputs]]
    path = "a.log"
    [[rules]]
    name = "r-${TOKEN}"
    regex = 'x'
    handler = { type = "webhook", url = "https://hooks.example.com/${TOKEN}" }
    """
    message = error_of(tmp_path, text, TOKEN="sec ret{\x1b")
    assert "sec ret" not in message and "sec\\x20ret" not in message and "ret{" not in message
    assert "url" in message and "after substituting ${TOKEN}" in message


RULE_WITH_USER = "[[inputs]]\npath='a.log'\n[[rules]]\nregex='for (?P<user>\\S+)'\n"


@pytest.mark.parametrize(
    ("handler", "where", "names"),
    [
        ("{type='webhook', url='http://h.example/ban?u={usr}'}", "handler[1].url", "{usr}"),
        ("{type='mail', to='ops@example.com', subject='{usr}'}", "handler[1].subject", "{usr}"),
        ("{type='mail', to='ops@example.com', body='x {ip}'}", "handler[1].body", "{ip}"),
        ("{type='command', argv=['ban', '{usr}']}", "handler[1].argv[2]", "{usr}"),
        ("{type='command', argv=['ban'], env_fields=['ip']}", "handler[1].env_fields", "{ip}"),
        ("{type='json', fields=['user', 'ip']}", "handler[1].fields", "{ip}"),
        ("{type='count', count=3, window='1m', key='{ip}'}", "handler[1].key", "{ip}"),
        ("{type='throttle', limit=1, key='{usr}'}", "handler[1].key", "{usr}"),
    ],
)
def test_check_refuses_a_field_the_rule_cannot_produce(
    tmp_path: Path, handler: str, where: str, names: str
) -> None:
    """Any built-in handler's template or field list naming a missing field is a load error."""
    message = error_of(tmp_path, RULE_WITH_USER + f"handler={handler}\n")
    assert f": rules[1].{where}: " in message, message
    assert names in message and "available: " in message and "user" in message, message


def test_fields_after_an_exec_link_are_not_checked(tmp_path: Path) -> None:
    """An exec handler earlier in a chain may add fields, so the links after it load."""
    text = RULE_WITH_USER + (
        'handlers=[{type=\'exec\', command=\'event.data["named"]["ip"] = "1"\'},'
        " {type='json', fields=['ip']}]\n"
    )
    assert len(load(tmp_path, text).rules) == 1
