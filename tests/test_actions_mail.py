"""eventmp.actions.mail: the mail handler, against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator
from typing import Any

import dill
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from conftest import free_port, tail_data, tail_event

from eventmp import Event
from eventmp.actions.mail import MailEventHandler
from eventmp.errors import TemplateError

# == SMTP server for mail ========================================================================


class Inbox:
    """An aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        accepted = (login, password) == ("watcher", "s3cret")
        # handled=False: aiosmtpd itself answers a refusal with 535.
        return AuthResult(success=accepted, handled=False)

    def message(self, index: int = 0) -> email.message.EmailMessage:
        """The index-th mail received, parsed."""
        content = self.envelopes[index].original_content
        assert content is not None
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Inbox, int]]]:
    """Start aiosmtpd servers on 127.0.0.1 on demand; stop them all after the test."""
    controllers: list[Controller] = []

    def start(**options: Any) -> tuple[Inbox, int]:
        inbox = Inbox()
        if options.pop("auth", False):
            options.update(auth_require_tls=False, authenticator=inbox.authenticate)
        for _attempt in range(5):
            port = free_port()
            controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
            try:
                controller.start()
            except OSError:
                continue  # someone took the port between asking and binding
            controllers.append(controller)
            return inbox, port
        raise RuntimeError("no free port for the SMTP server")

    yield start
    for controller in controllers:
        controller.stop()


# == mail ========================================================================================


def test_mail_sends_subject_body_and_recipients(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """A mail goes to every recipient, subject and body filled from the event's fields."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com, Security <sec@example.com>",
        subject="[{rule}] {user} from {ip}",
        body="{time}\n{file}:{line_number}: {line}\n",
        sender="Watcher <watcher@example.org>",
        host="127.0.0.1",
        port=port,
    )
    assert handler.process_event(tail_event()) is True
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "watcher@example.org"
    assert envelope.rcpt_tos == ["ops@example.com", "sec@example.com"]
    message = inbox.message()
    assert message["Subject"] == "[ssh-failure] root from 203.0.113.9"
    assert message["From"] == "Watcher <watcher@example.org>"
    assert message["To"] == "ops@example.com, Security <sec@example.com>"
    assert message["Message-ID"].endswith("@example.org>")
    body = message.get_content()
    assert "/var/log/auth.log:42: Failed password for root from 203.0.113.9 port 22" in body


def test_mail_default_templates_and_list_of_recipients(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """By default the subject names the rule and the body is the line; to may be a list."""
    inbox, port = smtp_server()
    handler = MailEventHandler(["a@example.com", "b@example.com"], port=str(port), host="127.0.0.1")
    handler.process_event(tail_event(line="caf\u00e9 down"))
    assert inbox.envelopes[0].rcpt_tos == ["a@example.com", "b@example.com"]
    message = inbox.message()
    assert message["Subject"] == "eventmp: ssh-failure"
    assert message.get_content().splitlines() == ["caf\u00e9 down"]


def test_mail_event_cannot_inject_headers(smtp_server: Callable[..., tuple[Inbox, int]]) -> None:
    """Line breaks in a filled subject become spaces: an event cannot add a header."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", subject="{line}", host="127.0.0.1", port=port)
    handler.process_event(tail_event(line="alert\r\nBcc: thief@example.net"))
    assert inbox.envelopes[0].rcpt_tos == ["ops@example.com"]
    message = inbox.message()
    assert message["Bcc"] is None
    assert message["Subject"] == "alert Bcc: thief@example.net"


MAIL_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
]
ENCODED_WORD = (
    "=?utf-8?q?root=0D=0AReply-To:_attacker@evil.example=0D=0AContent-Type:_text/html"
    "=0D=0A=0D=0A<a_href=https://evil.example>Reset</a>?="
)


def test_mail_encoded_word_in_a_field_adds_no_header_and_no_body(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """An RFC 2047 encoded word in a field stays literal text: the mail has only its own headers."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com",
        subject="failed login for {user}",
        body="user {user}\n{line}",
        host="127.0.0.1",
        port=port,
    )
    assert handler.process_event(tail_event(named={"user": ENCODED_WORD, "ip": "1"})) is True
    (envelope,) = inbox.envelopes
    assert envelope.rcpt_tos == ["ops@example.com"]
    message = inbox.message()
    assert message.keys() == MAIL_HEADERS
    assert message["Reply-To"] is None
    assert message["Subject"] == "failed login for " + ENCODED_WORD.replace("=?", "= ?")
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain"
    assert message.get_content().splitlines() == [f"user {ENCODED_WORD}", tail_data()["line"]]


def test_mail_control_characters_in_a_field_are_escaped_in_the_subject(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """Control characters of a field show as escapes in the subject, other line breaks as spaces."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", subject="{user}", host="127.0.0.1", port=port)
    handler.process_event(tail_event(named={"user": "a\x1b[31mb\x00c\u2028d\x85e", "ip": "1"}))
    message = inbox.message()
    assert message.keys() == MAIL_HEADERS
    assert message["Subject"] == "a\\x1b[31mb\\x00c d e"


def test_mail_subject_that_decodes_to_a_line_break_is_refused(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """A field inside the template's own encoded word fails the event; nothing is sent."""
    inbox, port = smtp_server()
    handler = MailEventHandler(
        "ops@example.com", subject="=?utf-8?q?{user}?=", host="127.0.0.1", port=port
    )
    event = tail_event(named={"user": "root=0D=0ABcc:_thief@example.net", "ip": "1"})
    with pytest.raises(ValueError, match=r"header 'Subject' would hold a line break"):
        handler.process_event(event)
    assert inbox.envelopes == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("to", "=?utf-8?q?Ops=0D=0ABcc:_thief@example.net?= <ops@example.com>"),
        ("to", "Ops: ops@example.com;"),
        ("to", "ops@example.com\x1b"),
        ("sender", "a@example.com, b@example.com"),
        ("sender", "=?utf-8?q?W=0D=0AReply-To:_thief@example.net?= <w@example.com>"),
    ],
)
def test_mail_address_that_is_not_one_plain_address_is_refused(setting: str, value: str) -> None:
    """Each recipient and the sender must parse as a valid address without line breaks."""
    settings = {"to": "ops@example.com", setting: value}
    with pytest.raises(ValueError, match=f"setting '{setting}'"):
        MailEventHandler(**settings)


def test_mail_logs_in_with_username_and_password(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """With username and password the handler logs in before sending, even after a dill trip."""
    inbox, port = smtp_server(auth=True)
    handler = MailEventHandler(
        "ops@example.com", host="127.0.0.1", port=port, username="watcher", password="s3cret"
    )
    dill.loads(dill.dumps(handler)).process_event(tail_event())
    assert inbox.logins == [("watcher", "s3cret")]
    assert len(inbox.envelopes) == 1


def test_mail_wrong_password_is_an_error(smtp_server: Callable[..., tuple[Inbox, int]]) -> None:
    """A login the server refuses raises smtplib's authentication error; nothing is sent."""
    inbox, port = smtp_server(auth=True)
    handler = MailEventHandler(
        "ops@example.com", host="127.0.0.1", port=port, username="watcher", password="wrong"
    )
    with pytest.raises(smtplib.SMTPAuthenticationError):
        handler.process_event(tail_event())
    assert inbox.envelopes == []


def test_mail_starttls_against_a_server_without_it(
    smtp_server: Callable[..., tuple[Inbox, int]],
) -> None:
    """starttls=True refuses to go on in clear text when the server does not offer STARTTLS."""
    inbox, port = smtp_server()
    handler = MailEventHandler("ops@example.com", host="127.0.0.1", port=port, starttls="yes")
    with pytest.raises(smtplib.SMTPNotSupportedError):
        handler.process_event(tail_event())
    assert inbox.envelopes == []


def test_mail_str_never_shows_the_password() -> None:
    """str() shows the settings, with the password replaced by ***."""
    handler = MailEventHandler("ops@example.com", username="watcher", password="s3cret")
    text = str(handler)
    assert "s3cret" not in text
    assert "password='***'" in text
    assert "username='watcher'" in text
    assert "s3cret" not in repr(handler)


def test_mail_missing_field_is_a_template_error() -> None:
    """A subject naming a field the event lacks fails before any connection is made."""
    handler = MailEventHandler("ops@example.com", port=free_port(), host="127.0.0.1")
    with pytest.raises(TemplateError, match="rule"):
        handler.process_event(Event("app", None, "no rule here"))
