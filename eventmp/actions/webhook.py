"""``webhook``: :class:`WebhookEventHandler`, an HTTP request per event, with retries.

The handler is built in the parent, which refuses a URL template whose host a log line could
choose; each request, and each retry, is made in the worker, which waits through them.
:func:`quote_component`, the encoding of a field in the URL, is also what ``eventmp test``
(:mod:`eventmp.trial`) uses to show each field of the URL as the webhook would send it.
"""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import WebhookError
from ..event import Event
from ..handlers import EventHandler
from ..redact import SECRET, redact_settings, redact_url
from ..templates import Fields, literal_prefix, names, printable, render_encoded
from .jsonfile import _json_bytes, event_record
from .settings import _bad, _duration, _function, _headers, _integer, _template

# The scheme and authority (userinfo, host, port) at the start of a webhook URL template.
_ORIGIN = re.compile(r"(https?)://([^/?#]*)", re.IGNORECASE)


def quote_component(text: str) -> str:
    """A field's text percent-encoded as one URL path segment or query value.

    Nothing is left as it is but letters, digits and ``_.-~``: ``&``, ``=``, ``#``, ``/``, ``?``,
    spaces and control characters all become ``%XX``. Text decoded with surrogateescape gets
    its original bytes back.
    """
    return urllib.parse.quote(text, safe="", errors="surrogateescape")


def _url_origin(owner: str, url: str) -> tuple[str, str]:
    """The (scheme, authority) of a URL template, which must be the author's own text."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise _bad(owner, "url", f"must not hold spaces or control characters: {printable(url)!r}")
    prefix = literal_prefix(url)
    match = _ORIGIN.match(prefix)
    if match is None:
        raise _bad(owner, "url", f"expected an http:// or https:// URL, got {url!r}")
    if names(url) and match.end() == len(prefix):
        # The first field would be part of the host or port (or the userinfo): a log line
        # would choose where the event goes.
        raise _bad(
            owner,
            "url",
            f"a field may not be part of the scheme, host or port; write the host literally "
            f"and put fields after the '/', '?' or '#' that ends it: {url!r}",
        )
    try:
        parts = urllib.parse.urlsplit(match.group(0))
        port = parts.port
    except ValueError as exc:
        raise _bad(owner, "url", f"{exc}: {url!r}") from None
    if not parts.hostname or port == 0:
        raise _bad(owner, "url", f"expected a host (and a port from 1 to 65535): {url!r}")
    return parts.scheme.lower(), parts.netloc


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows a 301/302/303 answer to a POST with a GET that drops the body: the
    # event would be lost while the request looked successful.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookEventHandler(EventHandler):
    """Send the event as JSON (the object :class:`JsonEventHandler` writes) to ``url``.

    ``url`` is a template (``https://alerts.example/{rule}``); a ``user:password@`` part
    becomes HTTP basic authentication. ``str()`` and errors show only the URL's scheme, host and
    port (:func:`eventmp.redact.redact_url`: a token in the path or query, or the userinfo,
    shows as ``***``). The scheme (``http`` or
    ``https``), the userinfo, host and port must be the template's own text: a field before the
    ``/``, ``?`` or ``#`` that ends the host, a bad port, or a space or control character in
    the template is refused when the handler is built. Each field's text is percent-encoded
    (:func:`urllib.parse.quote`, ``safe=""``), so a value stays one path segment or query
    value whatever ``&``, ``=``, ``#``, ``/`` or control characters it holds; the URL and the
    reason in an error show any control character as an escape. ``headers`` (a table,
    or ``"Name: value"`` lines) are sent as they are, after ``Content-Type: application/json``;
    ``method`` is ``POST`` by default. Proxies come from the usual environment variables.

    Each attempt may wait ``timeout`` for the connection and for each answer read, as urllib
    counts it. A 2xx answer is success. Connection errors, timeouts and 5xx answers are tried
    again, up to ``retries`` more times, after ``backoff``, then twice that, and so on; a 4xx
    answer is not (the request itself is wrong), nor a redirect (urllib would turn the POST
    into a GET without its body), nor a certificate that does not verify, nor a URL the
    HTTP client rejects as malformed. Then it raises
    :class:`WebhookError` with the URL, the last status and the number of attempts. The worker
    waits through the retries.
    """

    def __init__(
        self,
        url: str,
        timeout: float | str = "10s",
        retries: int | str = 3,
        backoff: float | str = "0.5s",
        headers: Mapping[str, str] | str | None = None,
        method: str = "POST",
        *,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        owner = type(self).__name__
        self.url = _template(owner, "url", url)
        self._origin = _url_origin(owner, url)
        self.timeout = _duration(owner, "timeout", timeout)
        self.retries = _integer(owner, "retries", retries, 0)
        self.backoff = _duration(owner, "backoff", backoff, allow_zero=True)
        self.headers = _headers(owner, headers)
        if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
            raise _bad(owner, "method", f"expected an HTTP method such as POST, got {method!r}")
        self.method = method.upper()
        self._sleep = _function(owner, "sleep", sleep)

    def settings(self) -> dict[str, Any]:
        # The URL's userinfo, path and query and secret headers' values show as ***.
        return redact_settings(
            {
                "url": self.url,
                "timeout": self.timeout,
                "retries": self.retries,
                "backoff": self.backoff,
                "headers": self.headers,
                "method": self.method,
            }
        )

    def process_event(self, event: Event) -> bool:
        # Each field percent-encoded: a value stays one path segment or query value.
        url = render_encoded(self.url, Fields(event), quote_component)
        shown = printable(redact_url(url))
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme.lower(), parts.netloc) != self._origin:
            raise ValueError(f"webhook URL {shown!r} does not go where its template says")
        target, authorization = _split_credentials(url)
        headers = {"Content-Type": "application/json", "User-Agent": "eventmp"}
        if authorization:
            headers["Authorization"] = authorization
        headers.update(self.headers)
        body = _json_bytes(event_record(event))
        opener = urllib.request.build_opener(_RefuseRedirects)
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                request = urllib.request.Request(target, body, headers, method=self.method)
            except ValueError as exc:
                reason = _without_url(str(exc), target)
                raise WebhookError(shown, None, attempt, printable(reason)) from None
            status, reason, again = self._attempt(opener, request)
            if status is not None and 200 <= status < 300:
                return True
            if not again or attempt == attempts:
                raise WebhookError(shown, status, attempt, printable(_without_url(reason, target)))
            self._sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _attempt(
        self, opener: urllib.request.OpenerDirector, request: urllib.request.Request
    ) -> tuple[int | None, str, bool]:
        """One request: (status or None, what happened, whether another try may help)."""
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return int(response.status), str(response.reason), False
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            except (OSError, ValueError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            reason = f"{exc.reason}: {detail}" if detail else str(exc.reason)
            return exc.code, reason, exc.code >= 500
        except urllib.error.URLError as exc:
            again = not isinstance(exc.reason, ssl.SSLCertVerificationError)
            return None, str(exc.reason), again
        except (http.client.InvalidURL, ValueError) as exc:
            # A malformed URL stays malformed: trying again only delays the error.
            return None, f"malformed URL: {exc}", False
        except (OSError, http.client.HTTPException) as exc:
            return None, str(exc) or type(exc).__name__, True


def _without_url(reason: str, url: str) -> str:
    """``reason`` with ``url``, or its path and query, replaced by ``***``: an error from the
    HTTP client can quote them, and they may hold a token."""
    parts = urllib.parse.urlsplit(url)
    selector = urllib.parse.urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    hidden = redact_url(url)
    for text, shown in ((url, hidden), (repr(url)[1:-1], hidden)):
        reason = reason.replace(text, shown)
    if selector not in ("", "/"):
        for text in (selector, repr(selector)[1:-1]):
            reason = reason.replace(text, SECRET)
    return reason


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without its ``user:password@`` part, and that part as a basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), header
