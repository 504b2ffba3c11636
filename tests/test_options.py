"""eventmp.options: the dispatcher's settings are checked before anything starts."""

from __future__ import annotations

import multiprocessing

import pytest

from eventmp import EventDispatcher
from eventmp.options import MAX_IDLE_SPIN, default_start_method


@pytest.mark.parametrize(
    "setting",
    [
        {"poll_interval": -1},
        {"workers": 0},
        {"event_timeout": 0},
        {"max_pending": 0},
        {"max_events_per_worker": 0},
        {"kill_grace": -0.5},
        {"start_timeout": 0},
        {"idle_spin": -0.001},
        {"idle_spin": MAX_IDLE_SPIN * 2},
        {"start_method": "vfork"},
        {"max_pending_bytes": 0},
        {"max_pending_bytes": "lots"},
    ],
)
def test_settings_out_of_range_are_refused_by_name(setting: dict[str, object]) -> None:
    """Each setting out of its range raises ValueError naming it, before anything starts."""
    (name,) = setting
    with pytest.raises(ValueError, match=name):
        EventDispatcher(**setting)  # type: ignore[arg-type]


@pytest.mark.parametrize("idle_spin", [0.0, MAX_IDLE_SPIN])
def test_idle_spin_bounds_are_accepted(idle_spin: float) -> None:
    """idle_spin may be 0 (off) and the largest spin itself."""
    assert EventDispatcher(idle_spin=idle_spin).idle_spin == idle_spin


def test_default_start_method_is_never_fork() -> None:
    """The default is forkserver where the platform has it, else spawn: never fork."""
    method = default_start_method()
    assert method != "fork"
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert method == expected
    assert EventDispatcher().start_method == method
