"""eventmp.actions.webhook: the webhook handler, against a real HTTP server on 127.0.0.1.

The server (an http.server in a thread) records each request and answers with the statuses a
test gives it, or never answers.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import WAIT, free_port, tail_event, wait_until

from eventmp.actions.jsonfile import event_record
from eventmp.actions.webhook import WebhookEventHandler
from eventmp.errors import WebhookError
from eventmp.handlers import describe_handler


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep proxy settings of the environment away from requests to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# == HTTP server for webhooks ====================================================================


class HookServer:
    """An HTTP server on 127.0.0.1 that records requests and answers with given statuses.

    ``statuses`` are the answers to the first, second... request; the last one repeats. With
    ``hang``, it reads each request and never answers (until the test ends).
    """

    def __init__(self, statuses: list[int], hang: bool = False) -> None:
        self.statuses = statuses
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with hook.lock:
                    hook.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    number = len(hook.requests)
                if hook.hang:
                    hook.release.wait(WAIT)
                    self.close_connection = True
                    return
                status = hook.statuses[min(number, len(hook.statuses)) - 1]
                payload = b"" if status < 300 else f"answer {status}".encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def hook_server() -> Iterator[Callable[..., HookServer]]:
    """Start HookServers on demand; shut them all down after the test."""
    started: list[HookServer] = []

    def start(statuses: list[int] | None = None, hang: bool = False) -> HookServer:
        server = HookServer(statuses or [200], hang)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# == webhook =====================================================================================


def test_webhook_posts_the_event_as_json(hook_server: Callable[..., HookServer]) -> None:
    """The event is POSTed as the JSON record to the URL filled from the event, with headers."""
    server = hook_server([200])
    handler = WebhookEventHandler(
        server.url + "/hooks/{rule}", headers={"X-Source": "eventmp-tests"}
    )
    assert handler.process_event(tail_event()) is True
    (request,) = server.requests
    assert request["method"] == "POST"
    assert request["path"] == "/hooks/ssh-failure"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Source"] == "eventmp-tests"
    assert json.loads(request["body"]) == event_record(tail_event())


def test_webhook_method_put(hook_server: Callable[..., HookServer]) -> None:
    """method chooses the HTTP method."""
    server = hook_server([204])
    WebhookEventHandler(server.url, method="put").process_event(tail_event())
    assert server.requests[0]["method"] == "PUT"


def test_webhook_retries_after_503_then_succeeds(hook_server: Callable[..., HookServer]) -> None:
    """Two 503 answers are retried with exponential backoff and the third attempt succeeds."""
    server = hook_server([503, 503, 200])
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    handler = WebhookEventHandler(server.url, retries=3, backoff="10ms", sleep=sleep)
    assert handler.process_event(tail_event()) is True
    assert len(server.requests) == 3
    assert delays == [0.01, 0.02]
    bodies = {request["body"] for request in server.requests}
    assert len(bodies) == 1


def test_webhook_does_not_retry_400(hook_server: Callable[..., HookServer]) -> None:
    """A 400 answer is not retried: WebhookError with the status after one attempt."""
    server = hook_server([400, 200])
    handler = WebhookEventHandler(server.url + "/x", retries=3, backoff=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert (error.url, error.status, error.attempts) == (server.url + "/***", 400, 1)
    assert "answer 400" in error.reason
    assert len(server.requests) == 1


def test_webhook_gives_up_after_retries_on_5xx(hook_server: Callable[..., HookServer]) -> None:
    """A server that keeps answering 500 gets retries + 1 attempts, then WebhookError."""
    server = hook_server([500])
    handler = WebhookEventHandler(server.url, retries="2", backoff="0")
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert len(server.requests) == 3
    assert "HTTP 500" in str(caught.value)


def test_webhook_times_out_retries_and_gives_up(hook_server: Callable[..., HookServer]) -> None:
    """A server that never answers times each attempt out; after the retries, WebhookError."""
    server = hook_server(hang=True)
    handler = WebhookEventHandler(server.url, timeout="0.3s", retries=1, backoff="10ms")
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert error.status is None
    assert error.attempts == 2
    assert "timed out" in error.reason
    assert wait_until(lambda: len(server.requests) == 2)


def test_webhook_connection_refused_is_retried() -> None:
    """Nothing listening is a connection error: retried, then WebhookError without a status."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    handler = WebhookEventHandler(url, retries=2, backoff=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (None, 3)
    assert "refused" in caught.value.reason.lower()


def test_webhook_does_not_follow_redirects(hook_server: Callable[..., HookServer]) -> None:
    """A redirect is an error, not followed: urllib would resend the POST as a bodiless GET."""
    server = hook_server([302])
    with pytest.raises(WebhookError) as caught:
        WebhookEventHandler(server.url, retries=3).process_event(tail_event())
    assert (caught.value.status, caught.value.attempts) == (302, 1)
    assert len(server.requests) == 1


def test_webhook_credentials_in_url_become_basic_auth_and_stay_hidden(
    hook_server: Callable[..., HookServer],
) -> None:
    """user:password@ in the URL is sent as basic auth and never shown in str() or errors."""
    server = hook_server([401])
    url = server.url.replace("http://", "http://bot:hunter2@") + "/hook"
    handler = WebhookEventHandler(url, headers={"X-Api-Key": "k3y", "X-Plain": "shown"})
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event())
    assert server.requests[0]["headers"]["Authorization"] == "Basic Ym90Omh1bnRlcjI="
    assert server.requests[0]["headers"]["X-Api-Key"] == "k3y"
    assert "hunter2" not in str(caught.value)
    assert caught.value.url.startswith("http://***@127.0.0.1:")  # user and password hidden
    text = str(handler)
    assert "hunter2" not in text
    assert "k3y" not in text
    assert "shown" in text


BAN_VALUES = [
    "bob&ip=10.0.0.1",
    "bob#admin",
    "bob\x1b[31m",
    "a/../b?c d=e",
    "caf\u00e9 %41",
]


@pytest.mark.parametrize("user", BAN_VALUES)
def test_webhook_query_value_from_a_field_arrives_as_one_parameter(
    hook_server: Callable[..., HookServer], user: str
) -> None:
    """A field in the query is percent-encoded: the server gets it intact, in one attempt."""
    server = hook_server([200])
    sleeps: list[float] = []
    handler = WebhookEventHandler(
        server.url + "/ban?ip={ip}&user={user}", retries=3, backoff=0, sleep=sleeps.append
    )
    event = tail_event(named={"user": user, "ip": "203.0.113.6"})
    assert handler.process_event(event) is True
    (request,) = server.requests
    path, _, query = request["path"].partition("?")
    assert path == "/ban"
    assert urllib.parse.parse_qs(query, strict_parsing=True) == {
        "ip": ["203.0.113.6"],
        "user": [user],
    }
    assert sleeps == []


@pytest.mark.parametrize("user", ["../admin", *BAN_VALUES[1:]])
def test_webhook_path_segment_from_a_field_stays_one_segment(
    hook_server: Callable[..., HookServer], user: str
) -> None:
    """A field in the path is percent-encoded, '/' included: it stays one path segment."""
    server = hook_server([200])
    handler = WebhookEventHandler(server.url + "/users/{user}/ban", retries=0)
    assert handler.process_event(tail_event(named={"user": user, "ip": "1"})) is True
    (request,) = server.requests
    segments = request["path"].split("/")
    assert segments[:2] == ["", "users"]
    assert segments[3:] == ["ban"]
    assert urllib.parse.unquote(segments[2]) == user


def test_webhook_error_shows_control_characters_escaped(
    hook_server: Callable[..., HookServer],
) -> None:
    """A failure's text (what eventmp logs) holds no raw control character from a field."""
    server = hook_server([500])
    handler = WebhookEventHandler(server.url + "/ban?user={user}", retries=0)
    with pytest.raises(WebhookError) as caught:
        handler.process_event(tail_event(named={"user": "bob\x1b]0;pwned\x07\n", "ip": "1"}))
    text = str(caught.value)
    assert text.isprintable()
    assert "bob" not in text  # the path and query are not shown at all (they may hold a token)
    assert caught.value.url == server.url + "/***"
    assert (caught.value.status, caught.value.attempts) == (500, 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://{ip}/ban",
        "http://127.0.0.1:{port}/ban",
        "http://hooks{user}.example/ban",
        "http://bot:{user}@hooks.example/ban",
        "{url}",
        "{scheme}://hooks.example/ban",
        "http://hooks.example:99999/ban",
        "http://hooks.example/ban?user=a b",
        "http://hooks.example/ban?user=\x1b",
    ],
)
def test_webhook_url_whose_destination_a_field_could_choose_is_refused(url: str) -> None:
    """A field in the scheme, host, port or userinfo, or a malformed URL, fails at load time."""
    with pytest.raises(ValueError, match="setting 'url'"):
        WebhookEventHandler(url)


def test_webhook_error_survives_a_round_trip() -> None:
    """WebhookError crosses pickle with its url, status, attempts and reason."""
    error = WebhookError("http://x/", 503, 4, "Service Unavailable")
    loaded = pickle.loads(pickle.dumps(error))
    assert (loaded.url, loaded.status, loaded.attempts, loaded.reason) == (
        "http://x/",
        503,
        4,
        "Service Unavailable",
    )
    assert str(loaded) == str(error)


# == secrets =====================================================================================


def test_webhook_failure_and_str_show_no_token_nor_url_password(
    hook_server: Callable[..., HookServer],
) -> None:
    """A webhook that fails shows only the scheme, host and port of its URL, never a token."""
    server = hook_server([500])
    host = server.url.removeprefix("http://")
    url = f"http://alice:p@ss-SECRET@{host}/hook/TOKEN-123?k=TOKEN-123&r={{rule}}"
    handler = WebhookEventHandler(url, retries=0, headers={"X-Api-Key": "KEY-456"})
    with pytest.raises(WebhookError) as info:
        handler.process_event(tail_event())
    assert server.requests[0]["path"] == "/hook/TOKEN-123?k=TOKEN-123&r=ssh-failure"
    for shown in (str(info.value), info.value.url, str(handler), describe_handler(handler)):
        assert "TOKEN-123" not in shown and "p@ss" not in shown and "alice" not in shown
        assert "KEY-456" not in shown
    assert info.value.url == f"http://***@{host}/***"
    assert f"WebhookEventHandler(url='http://***@{host}/***'" in str(handler)
