"""The join token's format (k4sinit.core.jointoken): parsing, formatting, the errors."""

from __future__ import annotations

import re

import pytest

from k4sinit.core.jointoken import (
    BootstrapToken,
    JoinToken,
    parse_bootstrap_token,
    parse_join_token,
    server_problem,
)

HASH = "sha256:" + "ab" * 32
SECRET = "s3cr3tt0k3nvalue"
TOKEN = f"K4S1::https://10.0.0.1:6443::{HASH}::abcdef.{SECRET}"


def test_a_join_token_parses_into_its_parts_and_formats_back() -> None:
    token = parse_join_token(TOKEN)
    assert token == JoinToken("https://10.0.0.1:6443", HASH, BootstrapToken("abcdef", SECRET))
    assert str(token) == TOKEN
    assert str(token.token) == f"abcdef.{SECRET}"
    assert parse_join_token(f"  {TOKEN}\n") == token  # pasted with its newline


@pytest.mark.parametrize(
    "server", ["https://[fd00::1]:6443", "https://[fd00::1]", "https://cp.example.com:443"]
)
def test_servers_of_every_kind_round_trip(server: str) -> None:
    text = f"K4S1::{server}::{HASH}::abcdef.{SECRET}"
    assert parse_join_token(text).server == server
    assert str(parse_join_token(text)) == text


def test_the_secret_is_in_no_repr() -> None:
    token = parse_join_token(TOKEN)
    assert SECRET not in repr(token)
    assert "abcdef" in repr(token)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"abcdef.{SECRET}", "a bare bootstrap token, not a join token"),
        (f"K4S2::https://a:1::{HASH}::abcdef.{SECRET}", "join token format 'K4S2'"),
        ("hello", "not a join token: expected K4S1::<server URL>::sha256:"),
        (f"K4S1::{HASH}::abcdef.{SECRET}", "not a join token"),
        (f"K4S1::https://a:1::sha256:abc::abcdef.{SECRET}", "CA hash: expected sha256:<64 hex"),
        (f"K4S1::https://a:1::{HASH}::ABCDEF.{SECRET}", "last part: not a bootstrap token"),
        (f"K4S1::https://a:1::{HASH}::abcdef.{SECRET}x", "last part: not a bootstrap token"),
        (f"K4S1::http://a:1::{HASH}::abcdef.{SECRET}", "server: expected an https:// URL"),
        (f"K4S1::https://a:1/api::{HASH}::abcdef.{SECRET}", "server: only a host and a port"),
        (f"K4S1::https://a:99999::{HASH}::abcdef.{SECRET}", "server: Port out of range"),
    ],
)
def test_a_malformed_token_says_what_is_wrong_without_its_secret(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_join_token(text)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://10.0.0.1:6443", None),
        ("https://node-1.lan", None),
        ("https://[fd00::1]:6443/", None),
        ("https://[fd00::zz]:6443", "does not appear to be an IPv4 or IPv6 address"),
        ("https://user@host:6443", "only a host and a port"),
        ("https://host:6443?x=1", "only a host and a port"),
        ("https://under_score:6443", "invalid host"),
        ("https://:6443", "invalid host"),
        ("https://host:0", "port 0"),
    ],
)
def test_server_problems(url: str, problem: str | None) -> None:
    found = server_problem(url)
    assert found == problem if problem is None else problem in str(found)


def test_a_bootstrap_token_alone() -> None:
    assert parse_bootstrap_token(f"abcdef.{SECRET}") == BootstrapToken("abcdef", SECRET)
    for bad in ("abcdef", "abcde.0123456789abcdef", f"abcdef:{SECRET}"):
        with pytest.raises(ValueError, match="not a bootstrap token"):
            parse_bootstrap_token(bad)
    with pytest.raises(ValueError, match="not a bootstrap token"):
        BootstrapToken("abcdef", "short")
