"""Start-up rules at the edge: the admin key's shape, the safe-bind rule, and when uvicorn trusts proxy headers."""

from __future__ import annotations

import pytest

from batchgate.cli.main import proxy_options
from batchgate.config import AuthConfig, ConfigError, ServerConfig, Settings, check_bind_is_safe


def settings(admin_key: str | None = None, forwarded: str | None = None) -> Settings:
    return Settings(auth=AuthConfig(admin_key=admin_key), server=ServerConfig(forwarded_allow_ips=forwarded))


@pytest.fixture(autouse=True)
def _no_forwarded_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)


@pytest.mark.parametrize("raw", ["k3y-with-newline\n", "  k3y-with-newline", "\tk3y-with-newline\r\n"])
def test_surrounding_whitespace_is_stripped_from_the_admin_key(raw: str) -> None:
    assert AuthConfig(admin_key=raw).admin_key == "k3y-with-newline"


@pytest.mark.parametrize("raw", ["", "   ", "\n"])
def test_a_blank_admin_key_means_none(raw: str) -> None:
    assert AuthConfig(admin_key=raw).admin_key is None


@pytest.mark.parametrize("raw", ["two words", "tab\tinside", "line\nbreak"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_whitespace_inside_the_admin_key_is_refused_without_echoing_it(raw: str, host: str) -> None:
    key = raw + "-padding-to-16-chars"
    with pytest.raises(ConfigError) as info:
        check_bind_is_safe(settings(key), host)
    message = str(info.value)
    assert "whitespace" in message
    assert key not in message and raw not in message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_short_admin_key_off_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="16 characters"):
        check_bind_is_safe(settings("short"), host)
    check_bind_is_safe(settings("a" * 16), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_short_admin_key_on_loopback_is_fine(host: str) -> None:
    check_bind_is_safe(settings("x"), host)


def test_open_mode_refuses_forwarded_ips_from_the_config() -> None:
    with pytest.raises(ConfigError, match="forwarded_allow_ips"):
        check_bind_is_safe(settings(forwarded="127.0.0.1"), "127.0.0.1")
    check_bind_is_safe(settings("admin-secret", forwarded="127.0.0.1"), "127.0.0.1")


def test_open_mode_refuses_forwarded_ips_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    with pytest.raises(ConfigError, match="FORWARDED_ALLOW_IPS"):
        check_bind_is_safe(settings(), "127.0.0.1")
    check_bind_is_safe(settings("admin-secret"), "127.0.0.1")


def test_proxy_headers_are_off_unless_forwarded_ips_are_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_options(settings("k")) == {"proxy_headers": False}
    assert proxy_options(settings("k", forwarded="10.0.0.1,10.0.0.2")) == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.1,10.0.0.2",
    }
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.9")
    assert proxy_options(settings("k")) == {"proxy_headers": True}  # uvicorn reads the variable itself
