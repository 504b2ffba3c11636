"""eventmp.reporting: the per-rule counts, and the stats lines and last word of `eventmp run`."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import append, eventmp_command, interruptible_batch, pipeline_file, wait_until
from test_runner import Command

from eventmp import Event
from eventmp.reporting import Counts
from eventmp.stats import Tally

TWO_RULES = """
[dispatcher]
poll_interval = "20ms"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"  # in follow mode too: a line appended early is not skipped

[[inputs]]
name = "other"
paths = ["other.log"]
missing_ok = true

[[rules]]
name = "error"
inputs = ["app"]
regex = 'ERROR (?P<n>-?\\d+)'
handlers = [
  { type = "exec", command = "assert int(event.data['named']['n']) >= 0, 'negative'" },
  { type = "json", file = "seen.jsonl", fields = ["n"] },
]

[[rules]]
name = "never"
regex = 'NEVER'
handler = "print"
"""


def stats_objects(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_json_stats_every_interval_in_follow_mode(tmp_path: Path) -> None:
    """In follow mode with --stats-format json, a stats object comes each interval, then a final."""
    pipeline = pipeline_file(tmp_path, TWO_RULES)
    log = tmp_path / "app.log"
    log.touch()
    command = Command(pipeline, "--stats-format", "json", "--stats-interval", "0.1")
    try:
        assert wait_until(lambda: len(stats_objects(command.err)) >= 2)
        append(log, "ERROR 5")
        assert wait_until(
            lambda: any(o["rules"]["error"]["processed"] for o in stats_objects(command.err))
        )
    finally:
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    objects = stats_objects(command.err)
    assert [o["type"] for o in objects[:-1]] == ["stats"] * (len(objects) - 1)
    assert objects[-1]["type"] == "final" and objects[-1]["status"] == 0
    assert objects[-1]["rules"]["error"] == {
        "matches": 1,
        "processed": 1,
        "failed": 0,
        "slow_lines": 0,
    }
    assert objects[-1]["inputs"]["app"]["lines"] == 1


def test_counts_follow_each_event_by_rule_and_input() -> None:
    """Counts tallies matches and outcomes by data["rule"] and data["input"], others ignored."""
    counts = Counts()
    counts.declare(["a", "quiet"], ["in"])
    first = Event("t", None, {"rule": "a", "input": "in"})
    second = Event("t", None, {"rule": "a", "input": "in"})
    counts.matched([first, second, Event("t", None, 42)])
    counts.settled(first, None)
    counts.settled(second, ValueError("x"))
    rules, inputs = counts.snapshot()
    assert rules == {"a": Tally(2, 1, 1), "quiet": Tally()}
    assert inputs == {"in": Tally(2, 1, 1)}


class _Data(dict):  # type: ignore[type-arg]
    pass


_name = st.sampled_from(["a", "b", "in", "1", "True"]) | st.sampled_from([1, True, 1.0, ("a",)])
_names = st.fixed_dictionaries({}, optional={"rule": _name, "input": _name})
_event_data = st.one_of(
    _names,
    st.builds(_Data, _names),
    st.just({"rule": ["unhashable"], "input": "in"}),
    st.just(42),
)


def _expected_counts(
    declared: tuple[list[str], list[str]], batches: list[list[Event]], outcomes: list[Any]
) -> tuple[dict[str, Tally], dict[str, Tally]]:
    """The counts event by event, as the docstring of Counts says they go."""
    tables: tuple[dict[str, Tally], dict[str, Tally]] = ({}, {})
    for names, table in zip(declared, tables, strict=True):
        for name in names:
            table.setdefault(name, Tally())
    steps = [(event, "matches") for batch in batches for event in batch]
    steps += [(event, "processed" if error is None else "failed") for event, error in outcomes]
    for event, figure in steps:
        if not isinstance(event.data, dict):
            continue
        for key, table in zip(("rule", "input"), tables, strict=True):
            if key in event.data:
                tally = table.setdefault(str(event.data[key]), Tally())
                setattr(tally, figure, getattr(tally, figure) + 1)
    return tables


@settings(max_examples=300, deadline=None, database=None)
@given(
    batches=st.lists(st.lists(_event_data, max_size=6), max_size=4),
    declared=st.tuples(st.lists(_name.filter(lambda n: isinstance(n, str))), st.just(["in"])),
    choices=st.data(),
)
def test_counts_are_those_of_each_event_in_turn(
    batches: list[list[Any]], declared: tuple[list[str], list[str]], choices: st.DataObject
) -> None:
    """Per batch and per event, settled one by one or in runs, whatever the names (equal keys
    that are different names, unhashable ones, dicts of other types), the same figures and the
    same order of names."""
    events = [[Event("t", None, data) for data in batch] for batch in batches]
    every = [event for batch in events for event in batch]
    settled = choices.draw(st.permutations(every))
    outcomes = [
        (event, choices.draw(st.sampled_from([None, ValueError("x")]))) for event in settled
    ]
    counts = Counts()
    counts.declare(*declared)
    for batch in events:
        counts.matched(batch)
    # One at a time, or in runs of random length: the same figures either way.
    at = 0
    while at < len(outcomes):
        size = choices.draw(st.integers(1, 4))
        if size == 1:
            counts.settled(*outcomes[at])
        else:
            counts.settled_batch(outcomes[at : at + size])
        at += size
    rules, inputs = counts.snapshot()
    expected_rules, expected_inputs = _expected_counts(declared, events, outcomes)
    assert list(rules.items()) == list(expected_rules.items())
    assert list(inputs.items()) == list(expected_inputs.items())


def test_json_with_quiet_gives_only_the_final_object(tmp_path: Path) -> None:
    """-q leaves the final JSON object alone on stderr; -qq leaves nothing."""
    pipeline = pipeline_file(tmp_path, TWO_RULES)
    append(tmp_path / "app.log", "ERROR 1")
    quiet = eventmp_command("run", "--once", "-q", "--stats-format", "json", str(pipeline))
    assert quiet.returncode == 0, quiet.stderr
    (final,) = [json.loads(line) for line in quiet.stderr.splitlines()]
    assert final["type"] == "final" and final["rules"]["error"]["processed"] == 1
    silent = eventmp_command("run", "--once", "-qq", "--stats-format", "json", str(pipeline))
    assert silent.returncode == 0 and silent.stderr == ""


def test_json_final_object_says_which_signal_interrupted_a_batch_run(tmp_path: Path) -> None:
    """A --once run stopped by SIGTERM ends with a final object naming it, status 143."""
    pipeline = interruptible_batch(tmp_path)
    seen = tmp_path / "seen.txt"
    command = Command(pipeline, "--once", "--stats-format", "json", "--stats-interval", "0")
    try:
        assert wait_until(lambda: seen.exists() and seen.read_text() != "")
        command.signal(signal.SIGTERM)
        status = command.wait()
    finally:
        command.kill()
    assert status == 143, command.err
    (final,) = stats_objects(command.err)
    assert final["interrupted_by"] == "SIGTERM" and final["status"] == 143
    assert final["rules"]["slow"] == {"matches": 1, "processed": 1, "failed": 0, "slow_lines": 0}
