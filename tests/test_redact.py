"""eventmp.redact alone: what eventmp shows of URLs and handler settings."""

from __future__ import annotations

import pytest

from eventmp.redact import SECRET, redact_settings, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/T0KEN?k=T0KEN", "https://hooks.example.com/***"),
        ("https://alice:p@ss@hooks.example.com/x", "https://***@hooks.example.com/***"),
        ("http://[2001:db8::1]:8080/ban?ip=1", "http://[2001:db8::1]:8080/***"),
        ("https://hooks.example.com", "https://hooks.example.com"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
        ("https://hooks.example.com?token=T", "https://hooks.example.com?***"),
        ("https://hooks.example.com#frag", "https://hooks.example.com#***"),
        ("not a url with a T0KEN", SECRET),
    ],
)
def test_a_url_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    """Userinfo up to the last @, path, query and fragment are hidden; the rest stays."""
    assert redact_url(url) == shown


def test_settings_hide_env_values_passwords_and_secret_headers() -> None:
    """env keeps its names, password and secret-looking headers are hidden, others stay."""
    shown = redact_settings(
        {
            "url": "https://h.example/T",
            "env": {"API_KEY": "s3cret", "MODE": "x"},
            "password": "pw",
            "headers": {"Authorization": "Bearer T", "X-Api-Key": "K", "Accept": "json"},
            "argv": ["ban", "{ip}"],
        }
    )
    assert shown == {
        "url": "https://h.example/***",
        "env": {"API_KEY": SECRET, "MODE": SECRET},
        "password": SECRET,
        "headers": {"Authorization": SECRET, "X-Api-Key": SECRET, "Accept": "json"},
        "argv": ["ban", "{ip}"],
    }


def test_no_password_stays_none() -> None:
    """A password that is not set shows as None, not as a hidden value."""
    assert redact_settings({"password": None}) == {"password": None}
