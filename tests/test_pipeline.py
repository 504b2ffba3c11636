"""Pipeline files: every mistake is one clear message naming the file and key."""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from eventmp import ChainEventHandler, Event, PrintEventHandler
from eventmp.errors import TemplateError
from eventmp.pipeline import Pipeline, PipelineError, load_pipeline
from eventmp.templates import render

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
    "template", ["{file}", "{file}:{rule}", "{ip}", "{line_number:>8}", "{time}", "{0!r}", "x"]
)
def test_a_routing_key_is_its_template_rendered(tmp_path: Path, template: str) -> None:
    """The key of an event is render(key, event), worked out field by field."""
    key = replace(load(tmp_path, GOOD), key_template=template).key_function(2)
    assert key is not None
    data = {"file": "/var/log/auth.log", "rule": "r", "line_number": 7, "match": "m"}
    event = Event("tail:auth", None, {**data, "groups": [], "named": {"ip": "10.0.0.1"}})
    assert key(event) == render(template, event)


def test_a_routing_key_naming_a_field_the_event_lacks_raises_template_error(
    tmp_path: Path,
) -> None:
    """As render() does: the dispatcher then fails that event alone."""
    key = replace(load(tmp_path, GOOD), key_template="{ip}").key_function(2)
    assert key is not None
    with pytest.raises(TemplateError):
        key(Event("tail:auth", None, {"file": "f"}))


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[[rules]]\nregex='x'\nhandler='print'\n", "inputs", "at least one [[inputs]]"),
        ("[[inputs]]\npath='a.log'\n", "rules", "at least one [[rules]]"),
        ("[[inputs]]\nname='a'\n[[rules]]\nregex='x'\nhandler='print'\n", "inputs[1]", "'paths'"),
        (
            "[dispatcher]\nspeed=3\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.speed",
            "unknown setting",
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
            "[[inputs]]\npath='${NOPE}/a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "inputs[1].path",
            "environment variable NOPE is not set",
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
