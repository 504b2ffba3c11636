"""eventmp.templates: the fields an event offers, and templates filled from them without code."""

from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime
from typing import Any

import dill
import pytest
from conftest import time_zone
from hypothesis import given, settings
from hypothesis import strategies as st

from eventmp import Event, EventmpError
from eventmp.errors import TemplateError
from eventmp.templates import (
    Fields,
    check,
    fields,
    local_time,
    names,
    printable,
    render,
    render_fields,
)

STAMP = 1_700_000_000.5


def tail_event(**changes: Any) -> Event:
    """An event shaped like the file tail's, for an sshd line that matched a rule."""
    data: dict[str, Any] = {
        "input": "auth",
        "file": "/var/log/auth.log",
        "line_number": 42,
        "line": "Failed password for root from 203.0.113.9 port 22",
        "rule": "ssh-failure",
        "match": "for root from 203.0.113.9",
        "groups": ["root", "203.0.113.9", None],
        "named": {"user": "root", "ip": "203.0.113.9"},
    }
    data.update(changes)
    return Event("tail", None, data, timestamp=STAMP)


# == fields ======================================================================================


def test_fields_of_a_tail_event() -> None:
    """A tail event offers the event's fields, its data keys, numbered and named groups."""
    values = fields(tail_event())
    assert values["originator"] == "tail"
    assert values["timestamp"] == STAMP
    assert values["file"] == "/var/log/auth.log"
    assert values["line_number"] == 42
    assert values["rule"] == "ssh-failure"
    assert values["0"] == "for root from 203.0.113.9"
    assert values["1"] == "root"
    assert values["2"] == "203.0.113.9"
    assert values["3"] is None
    assert values["ip"] == "203.0.113.9"
    assert values["user"] == "root"
    assert "data" not in values


def test_fields_time_is_iso_8601_local_time() -> None:
    """The time field is the timestamp in ISO 8601, in local time with its UTC offset."""
    text = fields(tail_event())["time"]
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None
    assert parsed.timestamp() == STAMP
    assert parsed.utcoffset() == datetime.fromtimestamp(STAMP).astimezone().utcoffset()


def test_fields_of_non_dict_data_offer_data() -> None:
    """When the data is not a dict, it is offered whole as the data field."""
    values = fields(Event(("host", 1), None, [1, 2], timestamp=STAMP))
    assert values["data"] == [1, 2]
    assert values["originator"] == "('host', 1)"
    assert set(values) == {"originator", "timestamp", "time", "data"}


def test_named_group_shadows_data_key_of_same_name() -> None:
    """A named group called like a data key wins: the regex's author asked for it by name."""
    values = fields(tail_event(named={"file": "index.html"}))
    assert values["file"] == "index.html"


def test_fields_of_a_plain_dict_without_groups() -> None:
    """A dict that is not a tail's offers its string keys and nothing invented."""
    values = fields(Event("app", None, {"amount": 3, 7: "seven"}, timestamp=STAMP))
    assert values["amount"] == 3
    assert "0" not in values
    assert "7" not in values


def test_fields_ignore_malformed_groups() -> None:
    """Data whose groups and named entries are not a list and a dict adds no numbered fields."""
    values = fields(tail_event(groups="oops", named=["not", "a", "dict"]))
    assert "1" not in values
    assert values["groups"] == "oops"


# == render ======================================================================================


def test_render_fills_named_and_numbered_fields() -> None:
    """Fields by name, by group name and by group number are filled from the event."""
    text = render("{rule}: {user}@{ip} ({2}) in {file}:{line_number}", tail_event())
    assert text == "ssh-failure: root@203.0.113.9 (203.0.113.9) in /var/log/auth.log:42"


def test_render_whole_match_is_field_zero() -> None:
    """{0} is the whole match, as in a regex."""
    assert render("[{0}]", tail_event()) == "[for root from 203.0.113.9]"


def test_render_doubled_braces_are_literal() -> None:
    """{{ and }} render as single braces."""
    assert render("{{rule}} {{{rule}}}", tail_event()) == "{rule} {ssh-failure}"


def test_render_conversion_and_format_spec() -> None:
    """A conversion and a standard format spec apply as in str.format."""
    event = tail_event()
    assert render("{line_number:>5}|{timestamp:.0f}|{user!r}", event) == ("   42|1700000000|'root'")


def test_render_group_that_did_not_match_is_empty() -> None:
    """A group that took no part in the match (None) renders as an empty string."""
    assert render("<{3}>", tail_event()) == "<>"


def test_render_non_dict_data() -> None:
    """An event whose data is not a dict is rendered through {data}."""
    event = Event("app", None, 17, timestamp=STAMP)
    assert render("{originator} says {data}", event) == "app says 17"


def test_render_missing_field_raises_template_error() -> None:
    """A field the event lacks raises TemplateError naming it and listing those available."""
    with pytest.raises(TemplateError) as caught:
        render("{host} {line}", tail_event())
    error = caught.value
    assert isinstance(error, EventmpError)
    assert error.field == "host"
    assert "line" in error.available
    assert "ip" in error.available
    assert "{host}" in str(error)
    assert "ip" in str(error)


def test_render_value_that_rejects_the_format_spec() -> None:
    """A value that cannot take the format spec raises TemplateError with the reason."""
    with pytest.raises(TemplateError) as caught:
        render("{line:d}", tail_event())
    assert caught.value.field == "line"
    assert caught.value.reason


def test_render_does_not_reach_attributes_of_values() -> None:
    """A dunder name is just a field name the event lacks: nothing of Python is reachable."""
    with pytest.raises(TemplateError):
        render("{__class__}", tail_event())
    with pytest.raises(ValueError, match="attribute access"):
        render("{line.__class__}", tail_event())


def test_render_fields_uses_given_values() -> None:
    """render_fields fills a template from a mapping computed once."""
    assert render_fields("{a}-{b}", {"a": 1, "b": "x"}) == "1-x"


def test_template_error_survives_pickle_and_dill() -> None:
    """TemplateError keeps its field, available names and message across a round trip."""
    error = TemplateError("host", ["ip", "line"], "{host}")
    for module in (pickle, dill):
        loaded = module.loads(module.dumps(error))
        assert type(loaded) is TemplateError
        assert loaded.field == "host"
        assert loaded.available == ["ip", "line"]
        assert str(loaded) == str(error)


# == check =======================================================================================


@pytest.mark.parametrize(
    "template",
    [
        "",
        "plain text",
        "{line}",
        "{0} {1} {ip}",
        "{{literal}}",
        "{count:>5}",
        "{timestamp:.3f}",
        "{value:,}",
        "{line!r}",
        "{line!a:<20}",
        "{user-agent}",
    ],
)
def test_check_accepts_valid_templates(template: str) -> None:
    """Plain fields, escapes, conversions and standard format specs pass the check."""
    check(template)


@pytest.mark.parametrize(
    ("template", "position", "words"),
    [
        ("x {a.b}", 4, "attribute access"),
        ("x {a[0]}", 4, "indexing"),
        ("x {}", 2, "empty field"),
        ("x {line", 2, "never closed"),
        ("x } y", 2, "single '}'"),
        ("{a!x}", 2, "conversion"),
        ("{a!r x}", 4, "after the conversion"),
        ("{a:{w}}", 3, "nested"),
        ("{a:zz}", 3, "format spec"),
        ("{ a }", 1, "space"),
    ],
)
def test_check_rejects_with_position(template: str, position: int, words: str) -> None:
    """A bad template raises ValueError giving the position of the problem and what it is."""
    with pytest.raises(ValueError) as caught:
        check(template)
    message = str(caught.value)
    assert f"position {position}" in message
    assert words in message


def test_check_rejects_non_string() -> None:
    """A template that is not a string (a TOML number, say) is a ValueError."""
    with pytest.raises(ValueError, match="must be a string"):
        check(42)  # type: ignore[arg-type]


def test_bad_template_raises_value_error_when_rendered_too() -> None:
    """render() refuses a template check() would refuse, rather than guessing."""
    with pytest.raises(ValueError, match="position"):
        render("{line", tail_event())


# == names =======================================================================================


def test_names_lists_each_field_once_in_order() -> None:
    """names() gives the fields a template uses, in order of first use, without repeats."""
    assert names("{time} {ip} {user!r:>8} {ip} {{literal}} {0}") == ["time", "ip", "user", "0"]
    assert names("no fields {{at all}}") == []


def test_names_rejects_a_bad_template() -> None:
    """names() checks the template first, so a bad one is a ValueError with its position."""
    with pytest.raises(ValueError, match="at position 0"):
        names("{ip")


# == printable and escape ========================================================================


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "plain text, with 'quotes' and \\backslashes\\",
            "plain text, with 'quotes' and \\backslashes\\",
        ),
        ("two\nlines", "two\\nlines"),
        ("carriage\rreturn and\ttab", "carriage\\rreturn and\\ttab"),
        ("\x1b[2Kcleared", "\\x1b[2Kcleared"),
        ("nul\x00 del\x7f nel\x85", "nul\\x00 del\\x7f nel\\x85"),
        ("line\u2028sep para\u2029sep", "line\\u2028sep para\\u2029sep"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
        ("unicode é 日本 🙂", "unicode é 日本 🙂"),
        ("private \U000f0000", "private \\U000f0000"),
    ],
)
def test_printable_escapes_what_is_not_printable(text: str, shown: str) -> None:
    """printable() writes line breaks, control and format characters as repr-style escapes."""
    assert printable(text) == shown
    assert printable(shown) == shown, "escaping twice changes nothing"
    assert len(printable(text).splitlines()) <= 1


def test_render_fields_escape_applies_to_fields_not_to_the_template() -> None:
    """With escape=, a field's text is escaped but the template's own line break is kept."""
    values = {"user": "root\nFAKE alert", "n": 3, "groups": ["a\nb"]}
    shown = render_fields("{user}\n  n={n} {groups} {user!r}", values, escape=printable)
    assert shown == "root\\nFAKE alert\n  n=3 ['a\\nb'] 'root\\nFAKE alert'"


def test_render_fields_escape_before_padding() -> None:
    """A string field is escaped before its format spec pads it, so columns stay aligned."""
    shown = render_fields("[{user:<8}]", {"user": "a\tb"}, escape=printable)
    assert shown == "[a\\tb    ]"


def test_render_fields_without_escape_is_unchanged() -> None:
    """Without escape=, field values are written as they are (the json and command handlers)."""
    assert render_fields("{line}", {"line": "a\nb"}) == "a\nb"


def test_time_field_is_unambiguous_across_a_dst_change() -> None:
    """In the hour a DST change repeats, the time field's offset still names the right instant."""
    # 2026-10-25 00:30 UTC is 02:30 CEST; an hour later it is 02:30 CET: the same wall time.
    with time_zone("CET-1CEST,M3.5.0,M10.5.0/3"):
        shown = [
            fields(Event("x", None, {}, timestamp=s))["time"]
            for s in (1_792_888_200.0, 1_792_891_800.0)
        ]
    assert shown == ["2026-10-25T02:30:00.000+02:00", "2026-10-25T02:30:00.000+01:00"]


# == Fields and local_time: the lazy mapping gives what fields() gives ===========================

# Names that mean something to fields(), so that their precedence is exercised.
_NAMES = [
    "time",
    "timestamp",
    "originator",
    "data",
    "0",
    "1",
    "2",
    "01",
    "line",
    "ip",
    "match",
    "groups",
    "named",
]
_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(_NAMES)
_value = st.none() | st.integers() | _text | st.floats(allow_nan=True)
_data = st.one_of(
    _value,
    st.lists(_value, max_size=3),
    st.dictionaries(
        _text,
        _value
        | st.lists(_value, max_size=4)
        | st.tuples(_value, _value)
        | st.dictionaries(_text, _value, max_size=4),
        max_size=8,
    ),
)


def _assert_same_fields(event: Event) -> None:
    eager = fields(event)
    lazy = Fields(event)
    assert list(lazy) == list(eager)
    assert len(lazy) == len(eager)
    for name, value in eager.items():
        assert name in lazy
        assert repr(lazy[name]) == repr(value), name
    for name in ["nope", "4", "00", "-1", "1.0", "\uff11", "9" * 30]:
        if name not in eager:
            assert name not in lazy
            with pytest.raises(KeyError):
                lazy[name]


@settings(max_examples=300, deadline=None, database=None)
@given(data=_data, timestamp=st.floats(min_value=-1e10, max_value=1e10))
def test_lazy_fields_are_the_fields_of_any_event(data: Any, timestamp: float) -> None:
    """Each field the lazy mapping gives, its names and their order are those of fields()."""
    _assert_same_fields(Event(("host", 1), None, data, timestamp=timestamp))


def test_lazy_fields_keep_the_precedence_of_fields() -> None:
    """Named groups over groups over the match over the data's keys over the event's own."""
    data = {
        "time": "data's time",
        "0": "data's 0",
        "1": "data's 1",
        "5": "data's 5",
        "match": "m",
        "groups": ("g1", "g2"),
        "named": {"2": "named 2", "originator": "named originator"},
        3: "not a name",
    }
    event = Event("tail", None, data, timestamp=STAMP)
    _assert_same_fields(event)
    lazy = Fields(event)
    assert (lazy["time"], lazy["0"], lazy["1"], lazy["2"], lazy["5"]) == (
        "data's time",
        "m",
        "g1",
        "named 2",
        "data's 5",
    )
    assert lazy["originator"] == "named originator"
    assert 3 not in lazy


def _reference_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).astimezone().isoformat(timespec="milliseconds")


_times = st.one_of(
    st.floats(min_value=-2e9, max_value=4e9),
    # Fractions next to a millisecond and to a second, where the rounding to microseconds
    # that datetime does could carry into the next one.
    st.builds(
        lambda whole, fraction: whole + fraction,
        st.integers(min_value=-(10**9), max_value=4 * 10**9),
        st.sampled_from(
            [0.0, 0.0005, 0.0009995, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.99999995]
        ),
    ),
)


@pytest.mark.parametrize("zone", ["UTC0", "IST-5:30", "CET-1CEST,M3.5.0,M10.5.0/3", "XYZ+3:25:17"])
@settings(max_examples=200, deadline=None, database=None)
@given(timestamps=st.lists(_times, min_size=1, max_size=6))
def test_local_time_is_the_iso_text_datetime_gives(zone: str, timestamps: list[float]) -> None:
    """Whatever the zone, DST changes and offsets with seconds included, and the rounding."""
    with time_zone(zone):
        for timestamp in timestamps:
            assert local_time(timestamp) == _reference_time(timestamp)
            assert local_time(timestamp + 1800.25) == _reference_time(timestamp + 1800.25)


def test_local_time_follows_a_new_time_zone() -> None:
    """The same second formatted again after a TZ change has the new zone's offset."""
    with time_zone("UTC0"):
        first = local_time(STAMP)
    with time_zone("IST-5:30"):
        assert local_time(STAMP) == _reference_time(STAMP) != first


@pytest.mark.parametrize("timestamp", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_local_time_of_an_impossible_timestamp_fails_as_datetime_does(timestamp: float) -> None:
    with pytest.raises(Exception) as expected:
        _reference_time(timestamp)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        local_time(timestamp)
