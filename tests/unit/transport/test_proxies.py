"""X-Forwarded-For is believed from trusted proxies only, and only back to the first hop that
is not one of them."""

from __future__ import annotations

import pytest

from parley.settings import parse_networks
from parley.transport.proxies import TrustedProxies

PROXIES = TrustedProxies(parse_networks("10.0.0.0/8, 127.0.0.1, ::1"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # not a proxy: the header is anyone's
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", "198.51.100.1"),  # 6.6.6.6: spoofable
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("127.0.0.1", "10.0.0.1, 10.0.0.2", "127.0.0.1"),  # only proxies: the socket's
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(
    peer: str, forwarded: str | None, client: str
) -> None:
    assert PROXIES.client_of(peer, forwarded) == client


def test_with_no_trusted_proxies_the_header_is_ignored() -> None:
    assert TrustedProxies().client_of("127.0.0.1", "198.51.100.1") == "127.0.0.1"


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not an IP address"):
        parse_networks("127.0.0.1, 10.0.0.300")
