"""The package's top level: everything importable from eventmp, the heavy parts on first use."""

from __future__ import annotations

import subprocess
import sys

import eventmp


def _printed(code: str) -> list[str]:
    """The lines a fresh interpreter prints running ``code``."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_every_public_name_resolves() -> None:
    """Each name in eventmp.__all__ is importable from eventmp and listed by dir()."""
    for name in eventmp.__all__:
        assert getattr(eventmp, name) is not None, name
    assert set(eventmp.__all__) <= set(dir(eventmp))


def test_log_watching_parts_load_on_first_use() -> None:
    """Importing eventmp (as every worker does) does not import smtplib or the tail."""
    code = (
        "import sys, eventmp\n"
        "heavy = ('smtplib', 'urllib.request', 'eventmp.tail')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "eventmp.FileTailGenerator\n"
        "print('eventmp.tail' in sys.modules)\n"
    )
    assert _printed(code) == ["[]", "True"]


def test_importing_eventmp_imports_none_of_its_modules() -> None:
    """`import eventmp` loads no submodule; a name loads its own module on first use."""
    code = (
        "import sys, eventmp\n"
        "print(sorted(m for m in sys.modules if m.startswith('eventmp.')))\n"
        "eventmp.Event\n"
        "print('eventmp.event' in sys.modules, 'eventmp.dispatcher' in sys.modules)\n"
    )
    assert _printed(code) == ["[]", "True False"]


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A name eventmp does not have raises AttributeError naming it."""
    try:
        eventmp.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")
