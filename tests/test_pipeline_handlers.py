"""eventmp.pipeline_handlers: a pipeline file's handler tables, built and checked, and the
fields their templates name checked against those the rule's events have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_pipeline import error_of, load

from eventmp import ChainEventHandler, PrintEventHandler


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
        ("'nope'", "rules[1].handler[1].type", "unknown handler type 'nope'"),
        ("{type='webhook'}", "rules[1].handler[1]", "missing required setting 'url'"),
        (
            "{type='json', colour='red'}",
            "rules[1].handler[1].colour",
            "unknown setting for handler 'json'",
        ),
        ("{type='exec', command='if'}", "rules[1].handler[1].command", "handler 'exec'"),
        ("{type='nosuchmodule:Thing'}", "rules[1].handler[1].type", "cannot import 'nosuchmodule'"),
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
    """A mistake in a handler table (its type, a setting missing, unknown, bad or running code)
    is named with its place."""
    message = error_of(
        tmp_path, f"[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler={handler}\n"
    )
    assert f": {where}: " in message and what in message, message


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
    from eventmp.pipeline_handlers import tail_fields
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
    assert sorted(tail_fields(regex)) == sorted(fields(events[0]))


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
