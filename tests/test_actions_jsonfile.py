"""eventmp.actions.jsonfile: event_record, and the json handler against real files.

The json handler writes to real files (and to the process's streams), from this process and
from real worker processes; the output file's mode and its refusal of a symlink are tested for
print too, which opens its file the same way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dill
import pytest
from conftest import STAMP, WAIT, read_lines, tail_data, tail_event
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmp import Event, PrintEventHandler
from eventmp.actions.jsonfile import JsonEventHandler, _jsonable, event_record
from eventmp.errors import TemplateError
from eventmp.templates import fields
from eventmp.testing import run_events

# == event_record ================================================================================


def test_event_record_default_keys() -> None:
    """The default record has the timestamp, ISO time, originator and the data whole."""
    record = event_record(tail_event())
    assert list(record) == ["timestamp", "time", "originator", "data"]
    assert record["timestamp"] == STAMP
    assert datetime.fromisoformat(record["time"]).timestamp() == STAMP
    assert record["originator"] == "tail"
    assert record["data"] == tail_data()


@pytest.mark.parametrize(
    "data",
    [
        {"time": "the data's own"},
        {"line": "x", "named": {"originator": "a group"}},
        {"timestamp": 5, "named": {"time": "a group"}},
        {"named": {"x": "1"}},
        ["not", "a", "dict"],
        None,
    ],
    ids=["data-key", "named-group", "both", "other-group", "list", "none"],
)
def test_event_record_fields_are_those_a_template_sees(data: Any) -> None:
    """A data key or named group called time, timestamp or originator wins, as in templates."""
    event = Event("tail", None, data, timestamp=STAMP)
    values = fields(event)
    assert event_record(event) == {
        "timestamp": values["timestamp"],
        "time": values["time"],
        "originator": values["originator"],
        "data": data,
    }


def test_event_record_with_field_names_missing_one() -> None:
    """Asking for a field the event lacks raises TemplateError, as a template would."""
    with pytest.raises(TemplateError, match="host"):
        event_record(tail_event(), ["line", "host"])


# == json ========================================================================================


def test_json_appends_one_object_per_event(tmp_path: Path) -> None:
    """Each event becomes one JSON line, appended to what the file already held."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    handler = JsonEventHandler(path)
    assert handler.process_event(tail_event()) is True
    assert handler.process_event(Event("app", None, 7, timestamp=STAMP + 1)) is True
    handler.close()
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}
    assert lines[1]["data"] == tail_data()
    assert lines[1]["originator"] == "tail"
    assert lines[2] == {
        "timestamp": STAMP + 1,
        "time": datetime.fromtimestamp(STAMP + 1).astimezone().isoformat(timespec="milliseconds"),
        "originator": "app",
        "data": 7,
    }


def test_json_with_fields_writes_only_those(tmp_path: Path) -> None:
    """With fields, each line holds those fields of the event, named groups included."""
    path = tmp_path / "events.jsonl"
    handler = JsonEventHandler(str(path), fields="time, rule, ip, 1")
    handler.process_event(tail_event())
    (line,) = read_lines(path)
    assert list(line) == ["time", "rule", "ip", "1"]
    assert line["ip"] == "203.0.113.9"
    assert line["1"] == "root"


def test_json_writes_unserializable_values_as_repr(tmp_path: Path) -> None:
    """Values JSON cannot hold are written as their repr(), and the line is still valid JSON."""
    path = tmp_path / "events.jsonl"
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    data = {
        "raw": b"\x00\xff",
        "tags": frozenset({"a"}),
        "ratio": math.nan,
        (1, 2): "tuple key",
        "cycle": cyclic,
        "text": "caf\u00e9 \udcff",
    }
    JsonEventHandler(path).process_event(Event("app", None, data, timestamp=STAMP))
    (line,) = read_lines(path)
    written = line["data"]
    assert written["raw"] == repr(b"\x00\xff")
    assert written["tags"] == repr(frozenset({"a"}))
    assert written["ratio"] == "nan"
    assert written["(1, 2)"] == "tuple key"
    assert written["cycle"] == [1, repr(cyclic)]
    assert written["text"] == "caf\u00e9 \udcff"


def test_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """file="stdout" writes each line to the process's standard output."""
    JsonEventHandler("stdout").process_event(tail_event())
    out = capsys.readouterr().out
    assert json.loads(out)["data"]["rule"] == "ssh-failure"
    assert out.endswith("\n")


def test_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """file="stderr" writes each line to the process's standard error."""
    JsonEventHandler("stderr", fields=["line"]).process_event(tail_event(line="x"))
    assert capsys.readouterr().err == '{"line": "x"}\n'


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block with the process's umask set to ``mask``, then put the old one back."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def output_handlers(path: Path, **settings: Any) -> list[Any]:
    """A json handler and a print handler writing to ``path``, with the same settings."""
    return [JsonEventHandler(path, **settings), PrintEventHandler(path, **settings)]


@pytest.mark.parametrize("kind", [0, 1], ids=["json", "print"])
def test_output_file_is_created_0600_unless_mode_says_otherwise(tmp_path: Path, kind: int) -> None:
    """A file json or print creates is 0600 by default and exactly mode otherwise, whatever
    the umask; an existing file keeps its own mode."""
    default, given, existing = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    existing.touch()
    existing.chmod(0o644)
    with umask(0o022):
        output_handlers(default)[kind].process_event(tail_event())
    assert default.stat().st_mode & 0o777 == 0o600
    with umask(0o077):
        output_handlers(given, mode="0640")[kind].process_event(tail_event())
        output_handlers(existing)[kind].process_event(tail_event())
    assert given.stat().st_mode & 0o777 == 0o640
    assert existing.stat().st_mode & 0o777 == 0o644
    assert all(path.read_text() for path in (default, given, existing))


@pytest.mark.parametrize("kind", [0, 1], ids=["json", "print"])
def test_output_file_refuses_a_symlink_planted_at_its_path(tmp_path: Path, kind: int) -> None:
    """A symbolic link at the output path fails the event and its target stays untouched."""
    target = tmp_path / "authorized_keys"
    target.write_text("ssh-ed25519 AAAA owner\n")
    target.chmod(0o600)
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "created-through-link")
    for path in (link, dangling):
        with pytest.raises(OSError, match="refusing to follow the symbolic link") as caught:
            output_handlers(path)[kind].process_event(tail_event())
        assert caught.value.errno == errno.ELOOP
        assert caught.value.filename == str(path)
    assert target.read_text() == "ssh-ed25519 AAAA owner\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "created-through-link").exists()


def test_json_escapes_line_separators_so_a_record_stays_one_line(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 in a value are written as escapes: splitlines() sees one
    line per record, and the value reads back the same."""
    out = tmp_path / "events.jsonl"
    line = "Failed password for a\u2028b\u2029c\x85d from 203.0.113.9 port 22 ssh2 \u00e9"
    JsonEventHandler(out, fields=["line"]).process_event(tail_event(line=line))
    JsonEventHandler(out, fields=["ip"]).process_event(tail_event())
    text = out.read_text(encoding="utf-8")
    assert "\\u2028" in text and "\u00e9" in text
    records = text.splitlines()
    assert len(records) == 2
    assert json.loads(records[0]) == {"line": line}


def test_json_handler_travels_without_its_open_file(tmp_path: Path) -> None:
    """A handler that already wrote is serialized without its descriptor; the copy reopens."""
    path = tmp_path / "events.jsonl"
    handler = JsonEventHandler(path)
    handler.process_event(tail_event(line="before"))
    for module in (pickle, dill):
        copy = module.loads(module.dumps(handler))
        assert copy._fd is None
        copy.process_event(tail_event(line=f"from a {module.__name__} copy"))
        copy.close()
    handler.close()
    assert [line["data"]["line"] for line in read_lines(path)] == [
        "before",
        "from a pickle copy",
        "from a dill copy",
    ]


def test_json_str_shows_settings(tmp_path: Path) -> None:
    """str() of the handler shows where it writes and which fields."""
    text = str(JsonEventHandler(tmp_path / "x.jsonl", fields=["line"]))
    assert text == (
        f"JsonEventHandler(file={str(tmp_path / 'x.jsonl')!r}, fields=['line'], mode='0600')"
    )


def test_json_lines_from_several_workers_do_not_interleave(tmp_path: Path) -> None:
    """Two workers appending long lines to one file leave every line whole."""
    out = tmp_path / "events.jsonl"
    handler = JsonEventHandler(out)
    events = [Event("app", handler, {"n": n, "pad": "x" * 20_000}) for n in range(200)]
    assert run_events(events, timeout=WAIT, workers=2, poll_interval=0.05) == []
    lines = read_lines(out)
    assert sorted(line["data"]["n"] for line in lines) == list(range(200))


# == the bytes written, pinned against the straightforward encoding ==============================


def _reference_line(record: dict[str, Any]) -> bytes:
    # The rule for what is written: _jsonable()'s copy of every value, then json.dumps().
    text = json.dumps(_jsonable(dict(record), set()), ensure_ascii=False, allow_nan=False)
    text = text.translate({0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"})
    return text.encode("utf-8", "backslashreplace") + b"\n"


def _reference_record(event: Event, names: list[str] | None) -> dict[str, Any]:
    values = fields(event)
    record = {name: values[name] for name in names or ("timestamp", "time", "originator")}
    return record if names else {**record, "data": event.data}


class _Text(str):
    pass


class _Number(int):
    pass


class _Map(dict):  # type: ignore[type-arg]
    pass


class _Listing(list):  # type: ignore[type-arg]
    pass


_odd_text = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from(["\u2028", "\u2029", "\x85", "\udcff", "\x00", '"', "\\", "\u00e9"]),
    max_size=12,
)
_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _odd_text
    | st.builds(_Text, _odd_text)
    | st.builds(_Number, st.integers())
    | st.binary(max_size=4)
    | st.frozensets(st.integers(), max_size=2)
)
_key = (
    _odd_text | st.integers() | st.booleans() | st.none() | st.floats() | st.tuples(st.integers())
)
_odd_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.builds(_Listing, st.lists(inner, max_size=3))
        | st.dictionaries(_odd_text, inner, max_size=4)
        | st.dictionaries(_key, inner, max_size=3)
        | st.builds(_Map, st.dictionaries(_odd_text, inner, max_size=3))
    ),
    max_leaves=12,
)


def _written(handler: JsonEventHandler, event: Event, path: Path) -> bytes:
    path.unlink(missing_ok=True)
    handler.process_event(event)
    handler.close()
    return path.read_bytes()


@settings(max_examples=400, deadline=None, database=None)
@given(data=_odd_value, timestamp=st.floats(min_value=-1e10, max_value=1e10))
def test_json_writes_the_bytes_of_the_straightforward_encoding(
    tmp_path_factory: pytest.TempPathFactory, data: Any, timestamp: float
) -> None:
    """Any data, odd values included (NaN, bytes, sets, subclasses, keys that are not strings,
    lone surrogates, line separators), is written byte for byte as the copy-then-dumps way
    writes it, in the default record and with fields."""
    path = tmp_path_factory.mktemp("json") / "out.jsonl"
    event = Event("tail", None, data, timestamp=timestamp)
    assert _written(JsonEventHandler(path), event, path) == _reference_line(
        _reference_record(event, None)
    )
    names = [name for name in fields(event) if name and name != "time"][:4]
    if names:
        assert _written(JsonEventHandler(path, fields=names), event, path) == _reference_line(
            _reference_record(event, names)
        )


def test_json_writes_circular_and_deep_values_as_the_copy_does(tmp_path: Path) -> None:
    """Values deeper than the shortcut looks, and values that contain themselves."""
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    shared = [1, 2]
    deep: Any = "bottom"
    for _ in range(8):
        deep = {"down": [deep]}
    data = tail_data(groups=[cyclic, shared, shared], named={"loop": looped, "deep": deep})
    for event in [tail_event(**data), Event("app", None, deep, timestamp=STAMP)]:
        path = tmp_path / "out.jsonl"
        assert _written(JsonEventHandler(path), event, path) == _reference_line(
            _reference_record(event, None)
        )


@pytest.mark.parametrize("names", [None, ["time", "file", "line", "ip", "2"], ["0", "rule"]])
def test_json_writes_a_tail_event_as_the_straightforward_encoding(
    tmp_path: Path, names: list[str] | None
) -> None:
    path = tmp_path / "out.jsonl"
    line = "Failed password for caf\u00e9\u2028 from 203.0.113.9 port 22 \udcff"
    event = tail_event(line=line)
    assert _written(JsonEventHandler(path, fields=names), event, path) == _reference_line(
        _reference_record(event, names)
    )


def test_json_too_big_an_integer_fails_as_json_does(tmp_path: Path) -> None:
    """An integer json cannot write (more digits than int's limit) fails the event the same
    way, whichever way the record is encoded."""
    event = tail_event(line_number=10**5000)
    with pytest.raises(ValueError) as expected:
        _reference_line(_reference_record(event, None))
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        JsonEventHandler(tmp_path / "out.jsonl").process_event(event)
