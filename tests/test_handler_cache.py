"""Tests for eventmp.handler_cache: handlers serialized with dill once, then sent by id."""

from __future__ import annotations

from typing import Any

import pytest

from eventmp import Event, EventmpError, SerializationError
from eventmp.handler_cache import HandlerCache, handler_key
from eventmp.messages import STOP_HANDLER_ID
from eventmp.serialization import load_handler


class CountsPickling:
    """A handler that counts how many times it was pickled (dill calls ``__getstate__``)."""

    pickled = 0

    def __init__(self, tag: object = None) -> None:
        self.tag = tag

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return dict(self.__dict__)

    def process_event(self, event: Event) -> bool:
        return True


class RefusesPickling:
    """A handler dill cannot serialize; counts the attempts."""

    attempts = 0

    def __getstate__(self) -> dict[str, Any]:
        type(self).attempts += 1
        raise TypeError("not today")

    def process_event(self, event: Event) -> bool:
        return True


class Tagged:
    """A handler with two methods, used as bound-method handlers."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def first(self, event: Event) -> bool:
        return True

    def second(self, event: Event) -> bool:
        return True


def plain_function(event: Event) -> bool:
    return True


def test_same_handler_gets_the_same_id_and_is_pickled_once() -> None:
    """Asked again for one handler object, the cache returns its id and bytes without dill."""
    CountsPickling.pickled = 0
    cache = HandlerCache()
    handler = CountsPickling("once")
    first = cache.lookup(handler)
    second = cache.lookup(handler)
    assert first == second
    assert first[0] > STOP_HANDLER_ID
    assert first[2] is None
    assert CountsPickling.pickled == 1
    assert len(cache) == 1


def test_equal_but_distinct_handlers_get_distinct_ids() -> None:
    """Handlers are keyed by identity: two equal-looking objects are two handlers."""
    cache = HandlerCache()
    ids = [cache.lookup(CountsPickling("same"))[0] for _ in range(3)]
    assert len(set(ids)) == 3
    assert len(cache) == 3


def test_a_handler_built_per_event_is_kept_alive_so_its_address_is_not_reused() -> None:
    """Handlers dropped by the caller stay cached, so a new one at a freed address is new."""
    cache = HandlerCache()
    ids = [cache.lookup(CountsPickling(n))[0] for n in range(50)]
    assert len(set(ids)) == 50


def test_bound_methods_are_keyed_by_object_and_function() -> None:
    """Each ``obj.method`` access builds a new bound method; all of them share one id."""
    cache = HandlerCache()
    one, other = Tagged("one"), Tagged("other")
    assert one.first is not one.first
    assert handler_key(one.first) == handler_key(one.first)
    first_id = cache.lookup(one.first)[0]
    assert cache.lookup(one.first)[0] == first_id
    assert cache.lookup(one.second)[0] != first_id
    assert cache.lookup(other.first)[0] != first_id
    assert len(cache) == 3


def test_plain_functions_are_keyed_by_identity() -> None:
    """A function (no ``__self__``) is keyed by its id; its bytes load back to the function."""
    cache = HandlerCache()
    assert handler_key(plain_function) == id(plain_function)
    handler_id, blob, evicted = cache.lookup(plain_function)
    assert cache.lookup(plain_function)[0] == handler_id
    assert evicted is None
    assert load_handler(blob) is plain_function  # importable: by reference


def test_cached_bytes_load_back_to_an_equivalent_handler() -> None:
    """The bytes the cache returns are the handler's dill serialization."""
    cache = HandlerCache()
    _handler_id, blob, _evicted = cache.lookup(CountsPickling("payload"))
    loaded = load_handler(blob)
    assert type(loaded) is CountsPickling
    assert loaded.tag == "payload"


def test_an_unserializable_handler_raises_every_time_and_dill_tries_once() -> None:
    """A handler dill refuses raises SerializationError on each lookup; dill is not retried."""
    RefusesPickling.attempts = 0
    cache = HandlerCache()
    handler = RefusesPickling()
    for _ in range(3):
        with pytest.raises(SerializationError, match="not today"):
            cache.lookup(handler)
    assert RefusesPickling.attempts == 1
    assert len(cache) == 1


def test_an_unserializable_handler_does_not_spoil_the_others() -> None:
    """After a refused handler, other handlers still get ids and bytes."""
    cache = HandlerCache()
    with pytest.raises(SerializationError):
        cache.lookup(RefusesPickling())
    handler_id, blob, evicted = cache.lookup(plain_function)
    assert handler_id > STOP_HANDLER_ID
    assert blob
    assert evicted is None


def test_none_handler_raises_eventmp_error() -> None:
    """An event without a handler is refused with EventmpError; nothing is cached."""
    cache = HandlerCache()
    with pytest.raises(EventmpError, match="no handler"):
        cache.lookup(None)
    assert len(cache) == 0


def test_eviction_returns_the_least_recently_used_id_at_size_plus_one() -> None:
    """The lookup that makes size+1 handlers evicts the oldest and returns its id."""
    cache = HandlerCache(size=3)
    handlers = [CountsPickling(n) for n in range(4)]
    ids = []
    for handler in handlers[:3]:
        handler_id, _blob, evicted = cache.lookup(handler)
        assert evicted is None
        ids.append(handler_id)
    fourth_id, _blob, evicted = cache.lookup(handlers[3])
    assert evicted == ids[0]
    assert fourth_id not in ids
    assert len(cache) == 3


def test_an_evicted_handler_comes_back_with_a_new_id() -> None:
    """A handler asked for after its eviction is serialized again under a fresh id."""
    CountsPickling.pickled = 0
    cache = HandlerCache(size=1)
    first, second = CountsPickling("a"), CountsPickling("b")
    first_id = cache.lookup(first)[0]
    second_id, _blob, evicted = cache.lookup(second)
    assert evicted == first_id
    again_id, _blob, evicted = cache.lookup(first)
    assert evicted == second_id
    assert again_id not in (first_id, second_id)
    assert CountsPickling.pickled == 3


def test_reuse_moves_a_handler_to_the_end() -> None:
    """A handler looked up again is the most recently used: the next eviction spares it."""
    cache = HandlerCache(size=2)
    a, b, c = CountsPickling("a"), CountsPickling("b"), CountsPickling("c")
    a_id = cache.lookup(a)[0]
    b_id = cache.lookup(b)[0]
    assert cache.lookup(a)[0] == a_id
    _c_id, _blob, evicted = cache.lookup(c)
    assert evicted == b_id
    handler_id, _blob, evicted = cache.lookup(a)
    assert (handler_id, evicted) == (a_id, None)  # still cached: evicts nothing
