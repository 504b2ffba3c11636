"""eventmp.pipeline_values: a pipeline file's single values checked, each error naming its place
and never a substituted secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pipeline import error_of


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
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
            "[dispatcher]\nidle_spin='50ms'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
            "dispatcher.idle_spin",
            "expected a number of seconds up to 0.01",
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
    ],
)
def test_bad_values_name_file_key_and_expectation(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    """A value its key does not take is one error naming the file, the key and what it takes."""
    message = error_of(tmp_path, text)
    assert f": {where}: " in message, message
    assert what in message, message


def test_bad_routing_key_template(tmp_path: Path) -> None:
    """A routing key template with an unclosed brace gives its position."""
    message = error_of(
        tmp_path,
        "[dispatcher]\nkey='{file'\n[[inputs]]\npath='a.log'\n[[rules]]\nregex='x'\nhandler='print'\n",
    )
    assert ": dispatcher.key: bad template '{file' at position 0" in message


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
