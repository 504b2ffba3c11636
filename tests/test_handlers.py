"""eventmp.handlers: the handler base, composition, and the handlers that ship with eventmp."""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import pytest

from eventmp import (
    ChainEventHandler,
    Event,
    EventHandler,
    ExecEventHandler,
    PrintEventHandler,
    StopEventHandler,
)
from eventmp.handlers import call_handler, describe_handler

STAMP = 1_700_000_000.5


def make_event(data: Any = "payload") -> Event:
    """An event with a fixed timestamp, so its str() is predictable."""
    return Event("watcher", None, data, timestamp=STAMP)


class Recorder(EventHandler):
    """Appends its name to a shared log and returns a configured value."""

    def __init__(self, name: str, log: list[str], result: Any = True) -> None:
        self.name = name
        self.log = log
        self.result = result

    def process_event(self, event: Event) -> Any:
        self.log.append(self.name)
        return self.result


class Threshold(EventHandler):
    """A handler with public settings and a private attribute, for __str__."""

    def __init__(self, limit: int, label: str) -> None:
        self.limit = limit
        self.label = label
        self._cache: dict[str, int] = {}


class LabelledExec(ExecEventHandler):
    """A user's ExecEventHandler subclass with a setting of its own."""

    def __init__(self, command: str, label: str) -> None:
        super().__init__(command)
        self.label = label


# == EventHandler ================================================================================


def test_base_process_event_raises_not_implemented() -> None:
    """The EventHandler base does not handle events: process_event raises NotImplementedError."""
    with pytest.raises(NotImplementedError):
        EventHandler().process_event(make_event())


def test_str_names_class_and_public_settings() -> None:
    """str() of a handler names its class and its public settings, not its private state."""
    text = str(Threshold(3, "disk"))
    assert text == "Threshold(limit=3, label='disk')"
    assert "_cache" not in text


def test_str_of_handler_without_settings() -> None:
    """str() of a handler with no settings is its class name with empty parentheses."""
    assert str(EventHandler()) == "EventHandler()"


def test_repr_matches_str() -> None:
    """repr() of a handler is as readable as its str()."""
    handler = Threshold(1, "x")
    assert repr(handler) == str(handler)


# == call_handler / describe_handler =============================================================


def test_call_handler_uses_process_event() -> None:
    """call_handler() runs an object's process_event and returns its result."""
    log: list[str] = []
    assert call_handler(Recorder("r", log, result="ok"), make_event()) == "ok"
    assert log == ["r"]


def test_call_handler_calls_a_plain_callable() -> None:
    """call_handler() calls a plain callable with the event and returns its result."""
    seen: list[Event] = []

    def remember(event: Event) -> int:
        seen.append(event)
        return 7

    event = make_event()
    assert call_handler(lambda e: remember(e), event) == 7
    assert call_handler(remember, event) == 7
    assert seen == [event, event]


def test_call_handler_prefers_process_event_over_call() -> None:
    """An object that is both callable and has process_event is run by process_event."""

    class Both:
        def process_event(self, event: Event) -> str:
            return "process_event"

        def __call__(self, event: Event) -> str:
            return "call"

    assert call_handler(Both(), make_event()) == "process_event"


def test_call_handler_rejects_non_handler() -> None:
    """call_handler() raises TypeError naming the type of an object that is not a handler."""
    with pytest.raises(TypeError, match="int"):
        call_handler(42, make_event())


def test_call_handler_lets_handler_exceptions_through() -> None:
    """An exception raised by the handler propagates out of call_handler() unchanged."""

    def boom(event: Event) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        call_handler(boom, make_event())


def test_describe_handler_names_functions_and_handlers() -> None:
    """describe_handler() names functions by qualified name and EventHandlers by their str()."""

    def local(event: Event) -> bool:
        return True

    assert describe_handler(local).endswith("local")
    assert describe_handler(Threshold(2, "y")) == "Threshold(limit=2, label='y')"
    assert describe_handler(lambda e: True).endswith("<lambda>")


# == ChainEventHandler ===========================================================================


def test_chain_runs_handlers_in_order_and_returns_true() -> None:
    """A chain runs every handler in the order given and returns True when all succeed."""
    log: list[str] = []
    chain = ChainEventHandler(Recorder("a", log), Recorder("b", log), Recorder("c", log))
    assert chain.process_event(make_event()) is True
    assert log == ["a", "b", "c"]


@pytest.mark.parametrize("falsy", [False, None, 0, "", []])
def test_chain_stops_at_first_false_result(falsy: Any) -> None:
    """A chain stops at the first handler returning a false value; later ones are not called."""
    log: list[str] = []
    chain = ChainEventHandler(
        Recorder("a", log), Recorder("b", log, result=falsy), Recorder("c", log)
    )
    assert chain.process_event(make_event()) is False
    assert log == ["a", "b"]


def test_chain_treats_truthy_results_as_success() -> None:
    """Any true value (not only True) counts as success, and the chain returns True."""
    log: list[str] = []
    chain = ChainEventHandler(Recorder("a", log, result=1), Recorder("b", log, result="yes"))
    assert chain.process_event(make_event()) is True
    assert log == ["a", "b"]


def test_chain_stops_when_a_handler_raises() -> None:
    """An exception in one handler propagates and the handlers after it do not run."""
    log: list[str] = []

    def boom(event: Event) -> bool:
        raise RuntimeError("boom")

    chain = ChainEventHandler(Recorder("a", log), boom, Recorder("c", log))
    with pytest.raises(RuntimeError, match="boom"):
        chain.process_event(make_event())
    assert log == ["a"]


def test_chains_nest() -> None:
    """A chain inside a chain succeeds or short-circuits the outer chain like any handler."""
    log: list[str] = []
    inner_ok = ChainEventHandler(Recorder("i1", log), Recorder("i2", log))
    outer = ChainEventHandler(Recorder("o1", log), inner_ok, Recorder("o2", log))
    assert outer.process_event(make_event()) is True
    assert log == ["o1", "i1", "i2", "o2"]

    log.clear()
    inner_fails = ChainEventHandler(Recorder("i1", log, result=False), Recorder("i2", log))
    outer = ChainEventHandler(Recorder("o1", log), inner_fails, Recorder("o2", log))
    assert outer.process_event(make_event()) is False
    assert log == ["o1", "i1"]


def test_chain_accepts_plain_callables() -> None:
    """Plain callables (functions, lambdas) are chain members that receive the event."""
    seen: list[Any] = []

    def record(name: str, event: Event) -> bool:
        seen.append((name, event.data))
        return True

    def first(event: Event) -> bool:
        return record("first", event)

    chain = ChainEventHandler(first, lambda e: record("second", e))
    assert chain.process_event(make_event("d")) is True
    assert seen == [("first", "d"), ("second", "d")]


def test_chain_accepts_a_single_list() -> None:
    """A chain built from one list of handlers runs each handler of the list."""
    log: list[str] = []
    chain = ChainEventHandler([Recorder("a", log), Recorder("b", log)])
    assert chain.process_event(make_event()) is True
    assert log == ["a", "b"]


@pytest.mark.parametrize("bad", [42, "print", None, object()])
def test_chain_rejects_non_handlers(bad: Any) -> None:
    """A chain refuses, at construction, a member that is neither a handler nor callable."""
    with pytest.raises(TypeError):
        ChainEventHandler(Recorder("a", []), bad)


def test_empty_chain_succeeds() -> None:
    """An empty chain has nothing to fail, so it returns True."""
    assert ChainEventHandler().process_event(make_event()) is True


def test_chain_str_lists_its_members() -> None:
    """str() of a chain lists each member in order, by its str() or its name."""

    def notify(event: Event) -> bool:
        return True

    chain = ChainEventHandler(Threshold(1, "x"), notify, ChainEventHandler(PrintEventHandler()))
    text = str(chain)
    assert text.startswith("ChainEventHandler(")
    first = text.index("Threshold(limit=1, label='x')")
    second = text.index("notify")
    third = text.index("ChainEventHandler(PrintEventHandler(file='stdout'))")
    assert first < second < third


def test_chain_of_lambdas_survives_dill_round_trip() -> None:
    """A chain of lambdas and closures survives a dill round trip and still runs in order."""
    offset = 10
    chain = ChainEventHandler(
        lambda e: e.data.append(1) or True, lambda e: e.data.append(offset) or True
    )
    loaded = dill.loads(dill.dumps(chain, recurse=True))
    event = make_event([])
    assert loaded.process_event(event) is True
    assert event.data == [1, 10]


# == ExecEventHandler ============================================================================


def test_exec_runs_source_with_event_bound() -> None:
    """ExecEventHandler execs its source with the event bound to the name `event`."""
    event = make_event([])
    handler = ExecEventHandler("event.data.append(event.originator)")
    assert handler.process_event(event) is True
    assert event.data == ["watcher"]


def test_exec_source_may_span_several_statements() -> None:
    """The source is a whole program: imports, loops and definitions work."""
    event = make_event([])
    source = "import math\nfor i in range(3):\n    event.data.append(math.factorial(i))\n"
    assert ExecEventHandler(source).process_event(event) is True
    assert event.data == [1, 1, 2]


def test_exec_returns_true_even_if_source_has_no_value() -> None:
    """process_event returns True after running the source, whatever the source computes."""
    assert ExecEventHandler("None").process_event(make_event()) is True


def test_exec_bad_source_raises_syntax_error_at_construction() -> None:
    """Bad source raises SyntaxError when the handler is built, in the parent, not later."""
    with pytest.raises(SyntaxError):
        ExecEventHandler("def broken(:\n")


def test_exec_propagates_exceptions_from_the_source() -> None:
    """An exception raised by the executed source propagates out of process_event."""
    with pytest.raises(ZeroDivisionError):
        ExecEventHandler("1 / 0").process_event(make_event())


def test_exec_str_shows_the_command() -> None:
    """str() of an ExecEventHandler shows its command and nothing private."""
    assert str(ExecEventHandler("pass")) == "ExecEventHandler(command='pass')"


@pytest.mark.parametrize(
    "round_trip",
    [
        lambda h: pickle.loads(pickle.dumps(h)),
        lambda h: dill.loads(dill.dumps(h)),
        lambda h: dill.loads(dill.dumps(h, recurse=True)),
    ],
    ids=["pickle", "dill", "dill-recurse"],
)
def test_exec_survives_serialization_and_still_runs(
    round_trip: Callable[[ExecEventHandler], ExecEventHandler],
) -> None:
    """An ExecEventHandler, used or not, survives pickle and dill and runs its source after."""
    handler = ExecEventHandler("event.data.append('ran')")
    handler.process_event(make_event([]))  # compiled and used before the trip
    loaded = round_trip(handler)
    assert type(loaded) is ExecEventHandler
    assert loaded.command == handler.command
    event = make_event([])
    assert loaded.process_event(event) is True
    assert event.data == ["ran"]


def test_exec_subclass_settings_survive_pickle() -> None:
    """A subclass of ExecEventHandler keeps its own settings through a pickle round trip."""
    loaded = pickle.loads(pickle.dumps(LabelledExec("event.data.append(1)", label="audit")))
    assert loaded.command == "event.data.append(1)"
    assert getattr(loaded, "label", None) == "audit"


# == StopEventHandler ============================================================================


def test_stop_handler_is_an_exec_handler() -> None:
    """The poison pill belongs to the ExecEventHandler family, as in the original API."""
    assert issubclass(StopEventHandler, ExecEventHandler)
    assert isinstance(StopEventHandler(), ExecEventHandler)


def test_stop_handler_executes_nothing() -> None:
    """StopEventHandler returns True without executing its command, whatever that command is."""
    handler = StopEventHandler()
    handler.command = "event.data.append('executed')"
    event = make_event([])
    assert handler.process_event(event) is True
    assert event.data == []


def test_stop_handler_survives_pickle_as_its_own_type() -> None:
    """A pickled StopEventHandler is still recognisable by its type after the trip."""
    loaded = pickle.loads(pickle.dumps(StopEventHandler()))
    assert type(loaded) is StopEventHandler
    assert loaded.process_event(make_event()) is True


# == PrintEventHandler ===========================================================================


def test_print_writes_str_event_and_newline_to_a_file_object() -> None:
    """PrintEventHandler writes str(event) and a newline to a file object and returns True."""
    out = io.StringIO()
    event = make_event("disk full")
    assert PrintEventHandler(out).process_event(event) is True
    assert out.getvalue() == f"{event}\n"


def test_print_flushes_after_each_event(tmp_path: Path) -> None:
    """PrintEventHandler flushes a buffered file, so the line is visible before it is closed."""
    path = tmp_path / "out.log"
    with path.open("w", encoding="utf-8", buffering=1 << 16) as out:
        event = make_event("first")
        PrintEventHandler(out).process_event(event)
        assert path.read_text(encoding="utf-8") == f"{event}\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_print_to_named_stream(stream: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The strings "stdout" and "stderr" write to that stream of the running process."""
    event = make_event("to a stream")
    assert PrintEventHandler(stream).process_event(event) is True
    captured = capsys.readouterr()
    assert getattr(captured, "out" if stream == "stdout" else "err") == f"{event}\n"
    assert getattr(captured, "err" if stream == "stdout" else "out") == ""


def test_print_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """A PrintEventHandler built without a file writes to stdout."""
    event = make_event("default")
    PrintEventHandler().process_event(event)
    assert capsys.readouterr().out == f"{event}\n"


def test_print_resolves_stream_when_used(capsys: pytest.CaptureFixture[str]) -> None:
    """ "stdout" is looked up at each event, so the process's current sys.stdout is used."""
    handler = PrintEventHandler("stdout")
    replacement = io.StringIO()
    saved = sys.stdout
    sys.stdout = replacement
    try:
        handler.process_event(make_event("redirected"))
    finally:
        sys.stdout = saved
    assert "redirected" in replacement.getvalue()
    assert capsys.readouterr().out == ""


def test_print_given_sys_streams_stores_their_names() -> None:
    """sys.stdout and sys.stderr passed as objects are stored as "stdout" and "stderr"."""
    assert PrintEventHandler(sys.stdout).file == "stdout"
    assert PrintEventHandler(sys.stderr).file == "stderr"
    assert PrintEventHandler(sys.__stdout__).file == "stdout"


def test_print_to_path_appends_lines_and_keeps_existing_content(tmp_path: Path) -> None:
    """A path is opened for append: earlier content stays and each event adds one line."""
    path = tmp_path / "events.log"
    path.write_text("existing line\n", encoding="utf-8")
    handler = PrintEventHandler(str(path))
    first, second = make_event("one"), make_event("two")
    try:
        assert handler.process_event(first) is True
        assert handler.process_event(second) is True
        assert path.read_text(encoding="utf-8").splitlines() == [
            "existing line",
            str(first),
            str(second),
        ]
    finally:
        handler.close()


def test_print_to_path_creates_missing_file(tmp_path: Path) -> None:
    """A path that does not exist yet is created on the first event."""
    path = tmp_path / "new.log"
    handler = PrintEventHandler(str(path))
    try:
        handler.process_event(make_event("created"))
    finally:
        handler.close()
    assert path.read_text(encoding="utf-8") == f"{make_event('created')}\n"


def test_print_does_not_open_path_until_first_event(tmp_path: Path) -> None:
    """Building a path handler opens nothing: the file is opened where the handler runs."""
    path = tmp_path / "lazy.log"
    PrintEventHandler(str(path))
    assert not path.exists()


def test_print_accepts_pathlib_path(tmp_path: Path) -> None:
    """A pathlib.Path is accepted, stored as a string, and written to."""
    path = tmp_path / "events.log"
    handler = PrintEventHandler(path)
    try:
        assert handler.file == str(path)
        handler.process_event(make_event("via Path"))
    finally:
        handler.close()
    assert path.read_text(encoding="utf-8") == f"{make_event('via Path')}\n"


def test_print_str_names_its_file(tmp_path: Path) -> None:
    """str() of a PrintEventHandler names where it writes."""
    assert str(PrintEventHandler("stderr")) == "PrintEventHandler(file='stderr')"
    assert str(PrintEventHandler(tmp_path / "x.log")) == (
        f"PrintEventHandler(file={str(tmp_path / 'x.log')!r})"
    )


def test_print_path_handler_pickles_after_use_and_keeps_appending(tmp_path: Path) -> None:
    """A path handler with its file open pickles, and the copy appends to the same file."""
    path = tmp_path / "events.log"
    handler = PrintEventHandler(path)
    loaded: PrintEventHandler | None = None
    try:
        handler.process_event(make_event("before"))
        loaded = pickle.loads(pickle.dumps(handler))
        assert loaded.file == str(path)
        loaded.process_event(make_event("after"))
    finally:
        handler.close()
        if loaded is not None:
            loaded.close()
    assert path.read_text(encoding="utf-8").splitlines() == [
        str(make_event("before")),
        str(make_event("after")),
    ]


def test_print_stdout_handler_pickles_as_name(capsys: pytest.CaptureFixture[str]) -> None:
    """A handler given sys.stdout pickles (with pickle and dill) as the name "stdout"."""
    handler = PrintEventHandler(sys.stdout)
    for loaded in (pickle.loads(pickle.dumps(handler)), dill.loads(dill.dumps(handler))):
        assert loaded.file == "stdout"
        loaded.process_event(make_event("after the trip"))
    assert capsys.readouterr().out == f"{make_event('after the trip')}\n" * 2


def test_print_named_file_object_pickles_as_its_path(tmp_path: Path) -> None:
    """A handler given an open named file travels as that file's path, opened for append."""
    path = tmp_path / "named.log"
    with path.open("a", encoding="utf-8") as out:
        handler = PrintEventHandler(out)
        handler.process_event(make_event("parent"))
        loaded = pickle.loads(pickle.dumps(handler))
    try:
        assert loaded.file == str(path)
        loaded.process_event(make_event("copy"))
    finally:
        loaded.close()
    assert path.read_text(encoding="utf-8").splitlines() == [
        str(make_event("parent")),
        str(make_event("copy")),
    ]


def test_print_close_is_idempotent_and_allows_reuse(tmp_path: Path) -> None:
    """close() may be called twice, and a closed path handler reopens on its next event."""
    path = tmp_path / "events.log"
    handler = PrintEventHandler(path)
    handler.process_event(make_event("one"))
    handler.close()
    handler.close()
    try:
        handler.process_event(make_event("two"))
    finally:
        handler.close()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
