"""What eventmp shows of a handler's settings: secrets replaced by ``***``.

A handler's settings are printed by ``eventmp check``, in failure warnings and the summary, and
recorded in error events (the failed event's handler). :func:`redact_settings` is applied to
every one of them; :func:`redact_url` to every URL eventmp prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SECRET", "redact_settings", "redact_url"]

SECRET = "***"
"""What a hidden value shows as."""

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", re.DOTALL)
_SECRET_NAME = re.compile(r"auth|token|secret|key|cookie|pass|signature", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its path, query and fragment, and any userinfo, replaced by ``***``.

    The scheme, host and port stay: ``https://alice:p@ss@hooks.example.com/T?k=T`` shows as
    ``https://***@hooks.example.com/***``. The userinfo is everything before the *last* ``@``
    of the authority. Text that is not ``scheme://...`` shows as ``***``.
    """
    match = _URL.fullmatch(url)
    if match is None:
        return SECRET
    scheme, authority, rest = match.groups()
    if "@" in authority:
        authority = f"{SECRET}@{authority.rpartition('@')[2]}"
    if rest and rest != "/":
        rest = f"{rest[0]}{SECRET}" if rest[0] in "?#" else f"/{SECRET}"
    return f"{scheme}{authority}{rest}"


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A handler's settings as eventmp shows them.

    ``url`` (a string) through :func:`redact_url`; the values of ``env`` (a table) hidden,
    their names kept; ``password`` hidden unless None; and in ``headers`` (a table) the value
    of each header whose name suggests a secret (``Authorization``, ``X-Api-Key``, ``Cookie``,
    anything with ``token``, ``secret``, ``pass``, ``signature``).
    """
    shown = dict(settings)
    url = shown.get("url")
    if isinstance(url, str):
        shown["url"] = redact_url(url)
    env = shown.get("env")
    if isinstance(env, Mapping):
        shown["env"] = {name: SECRET for name in env}
    if shown.get("password") is not None:
        shown["password"] = SECRET
    headers = shown.get("headers")
    if isinstance(headers, Mapping):
        shown["headers"] = {
            name: SECRET if _SECRET_NAME.search(str(name)) else value
            for name, value in headers.items()
        }
    return shown
