"""eventmp.inputs: the command's input set, driven by hand with real tails on real files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from eventmp import Event
from eventmp.checkpoint import load_state
from eventmp.inputs import InputSet, StateFiles
from eventmp.matching import RuleStats
from eventmp.tail import FileTailGenerator, Rule

RULE = Rule("word", re.compile(r"\w+"), print)


def tail_on(log: Path, state: StateFiles, name: str = "app") -> FileTailGenerator:
    return FileTailGenerator(
        [str(log)], [RULE], name=name, start_at="beginning", state_file=state.path_for(name)
    )


def lines_of(events: list[Event]) -> list[str]:
    return [str(event.data["line"]) for event in events]


def test_held_until_released(tmp_path: Path) -> None:
    """Nothing is read before release(): a signal during the start finds no line taken."""
    log = tmp_path / "app.log"
    log.write_text("one\n")
    state = StateFiles(private=True)
    inputs = InputSet([tail_on(log, state)])
    try:
        assert inputs.get_events() == []
        inputs.release()
        assert lines_of(inputs.get_events()) == ["one"]
    finally:
        inputs.stop()
        state.close()


def test_replace_waits_for_outcomes_and_resumes_where_the_old_tails_stopped(
    tmp_path: Path,
) -> None:
    """A swap waits for every event's outcome, then the new tails go on from the next line."""
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    state = StateFiles(private=True)
    inputs = InputSet([tail_on(log, state)])
    inputs.release()
    try:
        events = inputs.get_events()
        assert lines_of(events) == ["one", "two"]
        # Events without an outcome: the swap gives up and the old tail reads on.
        assert not inputs.replace(lambda: [], restore=lambda: [], timeout=0.1)
        with log.open("a") as f:
            f.write("three\n")
        events += inputs.get_events()
        assert lines_of(events) == ["one", "two", "three"]
        for event in events:
            inputs.settled(event, None)
        assert inputs.replace(lambda: [tail_on(log, state)], restore=lambda: [], timeout=1)
        with log.open("a") as f:
            f.write("four\n")
        assert lines_of(inputs.get_events()) == ["four"]
        assert inputs.lines_read == 4
        assert inputs.input_progress() == {"app": (4, log.stat().st_size)}
    finally:
        inputs.stop()
        state.close()
    rules, by_input = inputs.counts.snapshot()
    assert (rules["word"].matches, rules["word"].processed) == (4, 3)
    assert by_input["app"].matches == 4


def test_a_failed_build_restores_the_old_inputs(tmp_path: Path) -> None:
    """If the new tails cannot be built, the old pipeline's are built again from the same spot."""
    log = tmp_path / "app.log"
    log.write_text("one\n")
    state = StateFiles(private=True)
    inputs = InputSet([tail_on(log, state)])
    inputs.release()

    def broken() -> list[FileTailGenerator]:
        raise ValueError("no")

    try:
        for event in inputs.get_events():
            inputs.settled(event, None)
        try:
            inputs.replace(broken, restore=lambda: [tail_on(log, state)], timeout=1)
        except ValueError:
            pass
        else:
            raise AssertionError("replace() hid the build's error")
        with log.open("a") as f:
            f.write("two\n")
        assert lines_of(inputs.get_events()) == ["two"]
    finally:
        inputs.stop()
        state.close()


def test_a_failing_tail_does_not_lose_the_other_tails_lines(tmp_path: Path) -> None:
    """A tail whose poll raises: the lines others read go out, the error comes next poll."""
    log = tmp_path / "app.log"
    log.write_text("one\n")

    class Broken(FileTailGenerator):
        def get_events(self) -> list[Event]:
            raise OSError("disk on fire")

    state = StateFiles(private=False)
    inputs = InputSet([Broken([str(log)], [RULE], name="bad"), tail_on(log, state)])
    inputs.release()
    try:
        assert lines_of(inputs.get_events()) == ["one"]
        try:
            inputs.get_events()
        except OSError as exc:
            assert "disk on fire" in str(exc)
        else:
            raise AssertionError("the tail's error was not raised")
    finally:
        inputs.stop()


def test_outcomes_reach_each_checkpointing_tail_and_one_that_raises_keeps_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Interleaved outcomes go to their own tails in runs; a tail whose settled_batch() raises
    is logged, and the other tail's checkpoint and every count still follow the outcomes."""
    good_log, bad_log = tmp_path / "good.log", tmp_path / "bad.log"
    good_log.write_text("one\ntwo\nthree\n")
    bad_log.write_text("four\nfive\n")

    class Broken(FileTailGenerator):
        def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
            raise RuntimeError("books on fire")

    state = StateFiles(private=True)
    good = tail_on(good_log, state, name="good")
    bad = Broken(
        [str(bad_log)], [RULE], name="bad", start_at="beginning", state_file=state.path_for("bad")
    )
    inputs = InputSet([good, bad])
    inputs.release()
    try:
        events = inputs.get_events()
        assert sorted(lines_of(events)) == ["five", "four", "one", "three", "two"]
        mixed = sorted(events, key=lambda event: str(event.data["line"]))  # tails interleaved
        with caplog.at_level(logging.ERROR, logger="eventmp"):
            inputs.settled_batch([(event, None) for event in mixed])
        assert "failed in settled_batch()" in caplog.text and "books on fire" in caplog.text
    finally:
        inputs.stop()
    good_state = state.path_for("good")
    assert good_state is not None
    saved = load_state(good_state, good, "beginning")
    state.close()
    assert [entry["offset"] for entry in saved.values()] == [good_log.stat().st_size]
    rules, by_input = inputs.counts.snapshot()
    assert (rules["word"].matches, rules["word"].processed) == (5, 5)
    assert (by_input["good"].processed, by_input["bad"].processed) == (3, 2)


def test_private_state_files_live_in_a_directory_removed_at_close(tmp_path: Path) -> None:
    """An input without state_file gets a private one in follow mode, gone after close()."""
    state = StateFiles(private=True)
    path = state.path_for("app")
    assert path is not None and path == state.path_for("app") != state.path_for("other")
    Path(path).write_text("{}")
    state.close()
    assert not Path(path).parent.exists()
    assert StateFiles(private=False).path_for("app") is None


def test_event_size_is_the_tails_own(tmp_path: Path) -> None:
    """max_pending_bytes sees each event's size as the tail that made it gives it."""
    log = tmp_path / "app.log"
    log.write_text("one\nthree\n")

    class Sized(FileTailGenerator):
        def event_size(self, event: Event) -> int:
            return 100 + len(str(event.data["line"]))

    inputs = InputSet([Sized([str(log)], [RULE], start_at="beginning")])
    inputs.release()
    try:
        events = inputs.get_events()
        assert [inputs.event_size(event) for event in events] == [103, 105]
        assert inputs.event_sizes(events) == [103, 105]
        assert inputs.event_size(Event("elsewhere", print, None)) == 0
    finally:
        inputs.stop()


def test_event_sizes_of_plain_tails_are_each_events_size(tmp_path: Path) -> None:
    """A poll of plain tails is sized in one pass, to what event_size() gives each event."""
    log = tmp_path / "app.log"
    log.write_text("one\n" + "x" * 5000 + "\nthree\n")
    inputs = InputSet([FileTailGenerator([str(log)], [RULE], start_at="beginning")])
    inputs.release()
    try:
        events = inputs.get_events()
        assert len(events) == 3
        assert inputs.event_sizes(events) == [inputs.event_size(event) for event in events]
        assert inputs.event_sizes([*events, Event("elsewhere", print, None)])[-1] == 0
    finally:
        inputs.stop()


def test_slow_lines_add_up_across_a_reload(tmp_path: Path) -> None:
    """The slow lines the tails count per rule are summed, those of replaced tails included."""
    log = tmp_path / "app.log"
    log.touch()

    class Slow(FileTailGenerator):
        def rule_stats(self) -> dict[str, RuleStats]:
            return {"word": RuleStats(matches=0, slow_lines=2, seconds=1.0)}

    state = StateFiles(private=True)
    inputs = InputSet([Slow([str(log)], [RULE], state_file=state.path_for("app"))])
    inputs.release()
    try:
        inputs.get_events()
        assert inputs.slow_lines() == {"word": 2}
        assert inputs.replace(
            lambda: [Slow([str(log)], [RULE], state_file=state.path_for("app"))],
            restore=lambda: [],
            timeout=1,
        )
        assert inputs.slow_lines() == {"word": 4}
    finally:
        inputs.stop()
        state.close()
