"""sidecar.clients: who the client is, as a table (no sockets)."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from sidecar.clients import ClientRules

RAILWAY = ClientRules((ipaddress.ip_network("100.64.0.0/10"),), "X-Real-IP")
XFF_ONLY = ClientRules((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))


@pytest.mark.parametrize(
    ("rules", "peer", "headers", "client", "trusted"),
    [
        # No trusted proxies: the peer, whatever the headers claim.
        (
            ClientRules(),
            "203.0.113.9",
            [("X-Real-IP", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")],
            "203.0.113.9",
            False,
        ),
        (ClientRules(), None, [], None, False),
        # A trusted proxy naming the client in its header.
        (RAILWAY, "100.64.1.2", [("X-Real-IP", "198.51.100.7")], "198.51.100.7", True),
        (RAILWAY, "100.64.1.2", [("X-Real-IP", " 198.51.100.7 ")], "198.51.100.7", True),
        # ... not an IP, or said twice: the X-Forwarded-For chain instead, else the peer.
        (RAILWAY, "100.64.1.2", [("X-Real-IP", "evil")], "100.64.1.2", True),
        (RAILWAY, "100.64.1.2", [("X-Real-IP", "1.1.1.1"), ("X-Real-IP", "2.2.2.2")], "100.64.1.2", True),
        (RAILWAY, "100.64.1.2", [("X-Real-IP", "evil"), ("X-Forwarded-For", "9.9.9.9")], "9.9.9.9", True),
        # An untrusted peer's header is ignored.
        (RAILWAY, "203.0.113.9", [("X-Real-IP", "198.51.100.7")], "203.0.113.9", False),
        # X-Forwarded-For: the last entry that is not itself a trusted proxy.
        (XFF_ONLY, "10.0.0.1", [("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 10.0.0.9")], "7.7.7.7", True),
        (XFF_ONLY, "10.0.0.1", [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "7.7.7.7")], "7.7.7.7", True),
        (XFF_ONLY, "10.0.0.1", [("X-Forwarded-For", "10.1.1.1, 10.2.2.2")], "10.0.0.1", True),
        (XFF_ONLY, "10.0.0.1", [], "10.0.0.1", True),
        (XFF_ONLY, "fd00::1", [("X-Forwarded-For", "2001:db8::5")], "2001:db8::5", True),
        (XFF_ONLY, "not-an-ip", [("X-Forwarded-For", "1.1.1.1")], "not-an-ip", False),
    ],
)
def test_identify(
    rules: ClientRules, peer: str | None, headers: list[tuple[str, str]], client: str | None, trusted: bool
) -> None:
    assert rules.identify(peer, CIMultiDict(headers)) == (client, trusted)


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("100.64.0.0", True),
        ("100.127.255.255", True),
        ("100.128.0.0", False),
        ("::ffff:100.64.0.1", False),
        ("", False),
    ],
)
def test_trusted(address: str, trusted: bool) -> None:
    assert RAILWAY.trusted(address) is trusted
