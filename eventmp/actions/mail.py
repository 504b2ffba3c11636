"""``mail``: :class:`MailEventHandler`, a mail over SMTP per event.

The handler is built in the parent, where its addresses are parsed and checked; each message is
built from its event, checked once more, and sent in the worker, over one SMTP connection per
mail.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from ..event import Event
from ..handlers import EventHandler
from ..redact import SECRET
from ..templates import Fields, printable, render_fields
from .settings import _bad, _boolean, _duration, _integer, _template, _text

# What the mail handler's message holds, in this order, and nothing else.
_MAIL_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
)


def _header_text(text: str) -> str:
    """A field's text made harmless in a header: one line, printable, no encoded word.

    Each line break (CR, LF, NEL, U+2028...) becomes a space, any other control or invisible
    character its escape (see :func:`~eventmp.templates.printable`), and ``=?`` becomes
    ``= ?``: an RFC 2047 encoded word such as ``=?utf-8?q?=0D=0A?=`` would otherwise be decoded
    into the very line break the first step took out.
    """
    return printable(" ".join(text.splitlines())).replace("=?", "= ?")


def _mail_addresses(owner: str, setting: str, items: list[Any]) -> list[Address]:
    """Each item parsed as mail addresses, or a ``ValueError`` naming ``setting``."""
    found: list[Address] = []
    for item in items:
        _text(owner, setting, item, one_line=True)
        if not item.isprintable():
            raise _bad(owner, setting, f"control character in {printable(item)!r}")
        try:
            header = email.policy.default.header_factory(setting, item)
            groups = header.groups
        except (ValueError, IndexError, TypeError, AttributeError):
            raise _bad(owner, setting, f"not a mail address: {item!r}") from None
        problem = "; ".join(str(defect) for defect in header.defects)
        if not problem and any(group.display_name is not None for group in groups):
            problem = "a group is not an address"
        addresses = [address for group in groups for address in group.addresses]
        if not problem and not addresses:
            problem = "no address"
        for address in addresses:
            text = f"{address.display_name}{address.username}{address.domain}"
            if not address.username or not address.domain:
                problem = problem or f"{address.addr_spec!r} is not user@domain"
            elif not text.isprintable():
                # An encoded word in a display name can decode to a line break.
                problem = problem or f"control character in {printable(str(address))!r}"
        if problem:
            raise _bad(owner, setting, f"not a mail address: {item!r} ({problem})")
        found.extend(addresses)
    return found


class MailEventHandler(EventHandler):
    """Send a mail over SMTP for each event, subject and body filled from it.

    ``to`` is an address, several separated by commas, or a list (``"Ops <ops@example.com>"``
    forms are fine); ``sender`` is one address. Both are the author's text, not templates, and
    are checked when the handler is built: each a valid ``user@domain`` address, without
    groups, line breaks or control characters. ``subject`` and ``body`` are templates.

    Nothing in an event can add a header or a body part. In the subject each field's line
    breaks become spaces, its other control characters escapes (``\\x1b``) and an encoded-word
    opener ``=?`` becomes ``= ?``; the template's own line breaks become spaces too. A header
    that would still hold a line break once parsed back (an encoded word in the template's own
    text with a field inside it) fails the event with ``ValueError`` before anything is sent, as
    does a message whose headers are not exactly those the handler set. The body is one
    ``text/plain`` part that may hold anything. One connection per mail to
    ``host``:``port``, each step waiting at most ``timeout``; with ``starttls`` the connection
    is upgraded to TLS (certificate checked) before anything else, and with ``username`` and
    ``password`` the handler logs in. ``str()`` never shows the password.
    """

    def __init__(
        self,
        to: list[str] | str,
        subject: str = "eventmp: {rule}",
        body: str = "{line}",
        sender: str = "eventmp@localhost",
        host: str = "localhost",
        port: int | str = 25,
        timeout: float | str = "30s",
        starttls: bool | str = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if isinstance(to, str):
            items: list[Any] = [to]
        elif isinstance(to, (list, tuple)):
            items = list(to)
        else:
            raise _bad(owner, "to", f"expected an address or a list of addresses, got {to!r}")
        if not items:
            raise _bad(owner, "to", f"expected mail addresses, got {to!r}")
        addresses = _mail_addresses(owner, "to", items)
        self.to = [str(address) for address in addresses]
        self._recipients = [address.addr_spec for address in addresses]
        self.subject = _template(owner, "subject", subject)
        self.body = _template(owner, "body", body)
        senders = _mail_addresses(owner, "sender", [sender])
        if len(senders) != 1:
            raise _bad(owner, "sender", f"expected one mail address, got {sender!r}")
        self.sender = sender
        self._envelope_sender = senders[0].addr_spec
        self.host = _text(owner, "host", host, one_line=True)
        self.port = _integer(owner, "port", port, 1, 65535)
        self.timeout = _duration(owner, "timeout", timeout)
        self.starttls = _boolean(owner, "starttls", starttls)
        self.username = None if username is None else _text(owner, "username", username)
        if password is not None and not isinstance(password, str):
            raise _bad(owner, "password", "expected a string")
        if (username is None) != (password is None):
            raise _bad(owner, "password", "give both username and password, or neither")
        self._password = password

    def settings(self) -> dict[str, Any]:
        shown = dict(super().settings())
        shown["password"] = None if self._password is None else SECRET
        return shown

    def message(self, event: Event) -> EmailMessage:
        """The mail this handler sends for ``event``.

        Raises ``ValueError`` when a header would not be one line once parsed back, or when
        the message would not hold exactly the handler's headers and one text/plain part.
        """
        values = Fields(event)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        subject = render_fields(self.subject, values, escape=_header_text)
        message["Subject"] = " ".join(subject.splitlines())
        message["Date"] = formatdate(localtime=True)
        # The sender's domain: make_msgid would otherwise ask DNS for this host's name.
        domain = self._envelope_sender.rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid("eventmp", domain=domain)
        message.set_content(render_fields(self.body, values))
        _check_message(message)
        return message

    def process_event(self, event: Event) -> bool:
        message = self.message(event)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            smtp.send_message(message, self._envelope_sender, self._recipients)
        return True


def _check_message(message: EmailMessage) -> None:
    """Raise ``ValueError`` unless ``message``, as sent, parses back to what was built."""
    for name in message:
        value = str(message[name])
        if not value.isprintable():
            raise ValueError(
                f"mail header {name!r} would hold a line break or control character once "
                f"decoded: {printable(value)!r}; not sent"
            )
    sent = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    if sent.keys() != list(_MAIL_HEADERS) or sent.get_content_type() != "text/plain":
        raise ValueError(
            f"mail would be sent with headers {printable(', '.join(sent.keys()))!r} and type "
            f"{sent.get_content_type()!r}, not the handler's own; not sent"
        )
