"""eventmp.serialization: handlers by dill, events by pickle, exceptions back to the parent."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from eventmp import Event, EventGenerator, EventHandler
from eventmp.errors import RemoteError, RemoteTraceback, SerializationError
from eventmp.messages import WireEvent
from eventmp.serialization import (
    dump_exception,
    dump_handler,
    dumps,
    encode_events,
    encode_single_events,
    load_exception,
    load_handler,
    loads,
    wire_originator,
)


def make_event(data: Any = "payload") -> Event:
    return Event("test", None, data, timestamp=1.0)


class Counter:
    """A plain class whose bound method serves as a handler."""

    def __init__(self, step: int) -> None:
        self.step = step

    def bump(self, event: Event) -> int:
        return int(event.data) + self.step


class RefusesToPickle:
    """An object that neither pickle nor dill can serialize."""

    def __reduce__(self) -> Any:
        raise TypeError("RefusesToPickle objects stay in their process")


class UnpicklableHandler(EventHandler):
    """A handler holding an object that neither pickle nor dill can serialize."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._resource = RefusesToPickle()

    def process_event(self, event: Event) -> bool:
        return True


class TwoArgError(Exception):
    """An exception whose __init__ takes two required arguments but passes one to the base."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"code {code}: {reason}")
        self.code = code
        self.reason = reason


class NamedGenerator(EventGenerator):
    def __str__(self) -> str:
        return "tail:/var/log/syslog"


def raise_and_capture(exc: BaseException) -> BaseException:
    """Raise ``exc`` from a function with a recognisable name and return it with its traceback."""

    def failing_handler_function() -> None:
        raise exc

    try:
        failing_handler_function()
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")


def round_trip_exception(exc: BaseException) -> BaseException:
    return load_exception(*dump_exception(raise_and_capture(exc)))


# == handlers ====================================================================================


def test_dump_handler_round_trips_a_lambda() -> None:
    """A lambda handler survives dump_handler/load_handler and computes the same result."""
    loaded = load_handler(dump_handler(lambda e: e.data * 2))
    assert loaded(make_event(21)) == 42


def test_dump_handler_round_trips_a_closure_with_its_captured_values() -> None:
    """A closure handler comes back with the values it captured."""
    prefix, seen = "seen:", ["earlier"]

    def handler(event: Event) -> list[str]:
        return [*seen, prefix + str(event.data)]

    loaded = load_handler(dump_handler(handler))
    assert loaded(make_event("x")) == ["earlier", "seen:x"]


def test_dump_handler_round_trips_a_bound_method_with_its_instance_state() -> None:
    """A bound method handler comes back bound to a copy of its instance, state included."""
    loaded = load_handler(dump_handler(Counter(step=5).bump))
    assert loaded(make_event(1)) == 6
    assert loaded.__self__.step == 5


def test_dump_handler_round_trips_a_class_defined_in_the_test() -> None:
    """An instance of a class defined inside a function comes back and runs."""

    class LocalHandler(EventHandler):
        def __init__(self, factor: int) -> None:
            self.factor = factor

        def process_event(self, event: Event) -> int:
            return int(event.data) * self.factor

    loaded = load_handler(dump_handler(LocalHandler(3)))
    assert loaded.process_event(make_event(4)) == 12
    assert loaded.factor == 3


def test_dump_handler_serializes_by_value_for_a_fresh_interpreter(tmp_path: Path) -> None:
    """Lambdas, closures and local classes load in a fresh interpreter that lacks this module."""
    factor = 7

    class LocalHandler:
        def process_event(self, event: Event) -> int:
            return int(event.data) + factor

    blobs = [
        dump_handler(lambda e: e.data * 2),
        dump_handler(lambda e: e.data * factor),
        dump_handler(LocalHandler()),
    ]
    (tmp_path / "handlers.pickle").write_bytes(pickle.dumps(blobs))
    script = (
        "import pickle, sys\n"
        "from eventmp import Event\n"
        "from eventmp.serialization import load_handler\n"
        "from eventmp.handlers import call_handler\n"
        "blobs = pickle.loads(open('handlers.pickle', 'rb').read())\n"
        "assert 'test_serialization' not in sys.modules\n"
        "print([call_handler(load_handler(b), Event('t', None, 3)) for b in blobs])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[6, 21, 10]"


def test_dump_handler_of_unserializable_handler_raises_serialization_error() -> None:
    """A handler dill cannot serialize raises SerializationError naming the handler and cause."""
    with pytest.raises(SerializationError) as info:
        dump_handler(UnpicklableHandler("audit"))
    message = str(info.value)
    assert "UnpicklableHandler(label='audit')" in message
    assert "stay in their process" in message
    assert isinstance(info.value.__cause__, TypeError)


def test_dump_handler_of_closure_over_a_generator_object_names_the_function() -> None:
    """A function closing over a generator object (which dill refuses) is named in the error."""
    numbers = (n for n in range(3))

    def next_number(event: Event) -> int:
        return next(numbers)

    with pytest.raises(SerializationError, match="next_number"):
        dump_handler(next_number)


# == events ======================================================================================


def wire(seq: int, data: Any, originator: Any = "gen") -> WireEvent:
    return (seq, 1, originator, data, 1000.0 + seq)


def test_encode_events_happy_path_is_one_plain_pickle() -> None:
    """Picklable events are encoded as one plain pickle of the list, with no dill inside."""
    items = [wire(1, "a"), wire(2, {"k": [1, 2]}), wire(3, None)]
    blob, kept, failed = encode_events(items)
    assert failed == []
    assert kept == items
    assert blob == pickle.dumps(items, 5)
    assert b"dill" not in blob
    assert pickle.loads(blob) == items


def test_encode_events_carries_lambda_data_via_dill() -> None:
    """An event whose data is a lambda is carried via dill inside the pickle and loads back."""
    items = [wire(1, "plain"), wire(2, lambda x: x + 1)]
    blob, kept, failed = encode_events(items)
    assert failed == []
    assert [item[0] for item in kept] == [1, 2]
    loaded = pickle.loads(blob)
    assert loaded[0] == items[0]
    seq, handler_id, originator, data, timestamp = loaded[1]
    assert (seq, handler_id, originator, timestamp) == (2, 1, "gen", 1002.0)
    assert data(41) == 42


def test_encode_events_reports_unserializable_data_and_keeps_the_others() -> None:
    """An event whose data cannot be serialized is reported alone; the other events are kept."""
    items = [wire(1, "first"), wire(2, RefusesToPickle()), wire(3, "third")]
    blob, kept, failed = encode_events(items)
    assert [seq for seq, _ in failed] == [2]
    error = failed[0][1]
    assert isinstance(error, SerializationError)
    assert "RefusesToPickle" in str(error)
    assert [item[0] for item in kept] == [1, 3]
    assert pickle.loads(blob) == [items[0], items[2]]


def test_encode_events_with_every_event_unserializable_gives_an_empty_batch() -> None:
    """When no event can be serialized, every one is reported and the blob is an empty list."""
    blob, kept, failed = encode_events([wire(1, RefusesToPickle()), wire(2, RefusesToPickle())])
    assert [seq for seq, _ in failed] == [1, 2]
    assert kept == []
    assert pickle.loads(blob) == []


def test_encode_events_sends_an_unpicklable_originator_by_name() -> None:
    """An originator that cannot be pickled travels as its description, and the event is kept."""

    class LockedSource:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __str__(self) -> str:
            return "locked-source"

    blob, _kept, failed = encode_events([wire(1, "data", originator=LockedSource())])
    assert failed == []
    assert pickle.loads(blob) == [(1, 1, "locked-source", "data", 1001.0)]


def test_encode_single_events_pickles_each_event_on_its_own() -> None:
    """encode_single_events gives (seq, pickled event) pairs that each load to their event."""
    items = [wire(1, "a"), wire(2, [1, 2])]
    blob, kept, failures = encode_single_events(items)
    pairs = pickle.loads(blob)
    assert (kept, failures) == (items, [])
    assert [seq for seq, _ in pairs] == [1, 2]
    assert [pickle.loads(blob) for _, blob in pairs] == items


def test_encode_single_events_carries_lambda_data_like_encode_events() -> None:
    """A resync batch carries data that only dill can serialize, as a normal batch does."""
    items = [wire(1, "plain"), wire(2, lambda x: x * 3)]
    blob, _kept, failures = encode_single_events(items)
    assert failures == []
    pairs = pickle.loads(blob)
    loaded = [pickle.loads(blob) for _, blob in pairs]
    assert loaded[0] == items[0]
    assert loaded[1][3](5) == 15


def test_encode_single_events_reports_what_cannot_be_serialized() -> None:
    """An event whose data neither pickle nor dill can carry fails alone in a resync batch."""
    items = [wire(1, "plain"), wire(2, RefusesToPickle()), wire(3, "after")]
    blob, kept, failures = encode_single_events(items)
    assert [seq for seq, _ in pickle.loads(blob)] == [1, 3]
    assert [item[0] for item in kept] == [1, 3]
    assert [seq for seq, _ in failures] == [2]
    assert isinstance(failures[0][1], SerializationError)


def test_wire_originator_names_a_generator() -> None:
    """A generator originator travels to the worker as its name, not as the object."""
    assert wire_originator(NamedGenerator()) == "tail:/var/log/syslog"


@pytest.mark.parametrize("value", ["name", 3, 2.5, None, b"raw", ("host", 22)])
def test_wire_originator_keeps_plain_values(value: Any) -> None:
    """A plain originator (string, number, None, bytes, tuple) travels as it is."""
    assert wire_originator(value) == value


def test_dumps_and_loads_round_trip_a_message() -> None:
    """dumps/loads carry a message envelope unchanged."""
    message = {"batch": 3, "events": [b"\x00\x01", "x"]}
    assert loads(dumps(message)) == message


# == exceptions ==================================================================================


def test_exception_round_trips_with_type_message_and_remote_traceback() -> None:
    """A normal exception comes back as its type, with the worker traceback as its __cause__."""
    loaded = round_trip_exception(ValueError("bad value 17"))
    assert type(loaded) is ValueError
    assert loaded.args == ("bad value 17",)
    cause = loaded.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "failing_handler_function" in cause.tb
    assert "ValueError: bad value 17" in cause.tb
    assert "Traceback (most recent call last)" in str(cause)


def test_dump_exception_gives_type_name_message_and_traceback() -> None:
    """dump_exception returns the pickled exception, its type name, message and traceback."""
    blob, type_name, message, tb = dump_exception(raise_and_capture(KeyError("missing")))
    assert blob
    assert type_name == "KeyError"
    assert message == "'missing'"
    assert "failing_handler_function" in tb


def test_dump_exception_qualifies_non_builtin_type_names() -> None:
    """A non-builtin exception's type name includes its module."""
    _, type_name, _, _ = dump_exception(raise_and_capture(TwoArgError(7, "nope")))
    assert type_name == f"{TwoArgError.__module__}.TwoArgError"


def test_exception_with_two_required_args_comes_back_with_its_identity() -> None:
    """An exception that pickles but fails to unpickle comes back as RemoteError naming it."""
    loaded = round_trip_exception(TwoArgError(7, "nope"))
    if isinstance(loaded, TwoArgError):
        assert (loaded.code, loaded.reason) == (7, "nope")
    else:
        assert isinstance(loaded, RemoteError)
        assert loaded.type_name == f"{TwoArgError.__module__}.TwoArgError"
        assert loaded.message == "code 7: nope"
        assert "failing_handler_function" in loaded.traceback
    assert isinstance(loaded.__cause__, RemoteTraceback)
    assert "failing_handler_function" in loaded.__cause__.tb


def test_exception_with_unpicklable_attribute_comes_back_as_remote_error() -> None:
    """An exception holding an unpicklable attribute comes back as RemoteError with its details."""
    exc = RuntimeError("holding a lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    loaded = round_trip_exception(exc)
    assert isinstance(loaded, RemoteError)
    assert loaded.type_name == "RuntimeError"
    assert loaded.message == "holding a lock"
    assert str(loaded) == "RuntimeError: holding a lock"
    assert isinstance(loaded.__cause__, RemoteTraceback)
    assert "failing_handler_function" in loaded.__cause__.tb


def test_exception_of_a_local_class_comes_back_as_remote_error() -> None:
    """An exception whose class cannot be found by name comes back as RemoteError."""

    class LocalError(Exception):
        pass

    loaded = round_trip_exception(LocalError("local"))
    assert isinstance(loaded, RemoteError)
    assert loaded.type_name.endswith("LocalError")
    assert loaded.message == "local"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_base_exceptions_round_trip(exc: BaseException) -> None:
    """SystemExit and KeyboardInterrupt from a handler come back as themselves."""
    loaded = round_trip_exception(exc)
    assert type(loaded) is type(exc)
    assert loaded.args == exc.args


def test_exception_whose_str_raises_still_travels() -> None:
    """An exception whose str() raises is still dumped, with a placeholder message."""

    class BadStr(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    _, type_name, message, _ = dump_exception(BadStr())
    assert type_name.endswith("BadStr")
    assert "str() of the exception failed" in message


def test_megabyte_message_survives() -> None:
    """An exception with a 1 MB message comes back with the whole message."""
    text = "x" * (1 << 20)
    loaded = round_trip_exception(ValueError(text))
    assert type(loaded) is ValueError
    assert str(loaded) == text


def test_megabyte_message_survives_as_remote_error() -> None:
    """A 1 MB message survives also when the exception comes back as RemoteError."""
    text = "y" * (1 << 20)
    exc = RuntimeError(text)
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    loaded = round_trip_exception(exc)
    assert isinstance(loaded, RemoteError)
    assert loaded.message == text


def test_dumped_exception_crosses_a_pickled_envelope() -> None:
    """The four fields from dump_exception pickle as a message and rebuild the exception."""
    fields = dump_exception(raise_and_capture(LookupError("far")))
    loaded = load_exception(*loads(dumps(fields)))
    assert type(loaded) is LookupError
    assert str(loaded) == "far"


def test_load_exception_of_corrupt_blob_gives_remote_error() -> None:
    """A blob that does not unpickle to an exception yields RemoteError from the other fields."""
    for blob in (b"not a pickle", pickle.dumps("a string")):
        loaded = load_exception(blob, "pkg.Err", "message", "tb text")
        assert isinstance(loaded, RemoteError)
        assert (loaded.type_name, loaded.message, loaded.traceback) == (
            "pkg.Err",
            "message",
            "tb text",
        )
        assert isinstance(loaded.__cause__, RemoteTraceback)
