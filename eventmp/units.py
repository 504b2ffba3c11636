"""Settings given as strings (a pipeline file, the command line): sizes and durations."""

from __future__ import annotations

import re

__all__ = ["parse_bool", "parse_duration", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``1048576``, ``"512MB"``, ``"1.5GiB"``, ``"100k"`` (K/M/G/T: powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (expected e.g. 1048576, '512MB', '2GiB')")
    number, unit, _i, _b = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024**power)


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``2``, ``0.5``, ``"250ms"``, ``"3s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (expected e.g. 2, '250ms', '5m')")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[(unit or "s").lower()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value: bool | int | str) -> bool:
    """A boolean from ``True``, ``1``, ``"true"``, ``"yes"``, ``"on"`` (and their opposites)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"not a boolean: {value!r} (expected true/false, yes/no, on/off, 1/0)")
