"""The client's address behind trusted proxies: the X-Forwarded-For walk (gateway.policy.forwarded)
on its own; tests/gateway/test_acl.py drives it through the real gateway."""
from __future__ import annotations

import pytest

from gateway.policy.forwarded import MAX_HOPS, client_address, parse_entry
from gateway.policy.iprules import IpSet

TRUSTED = IpSet(["10.0.0.0/8", "2001:db8:1::/48", "192.0.2.1"])


@pytest.mark.parametrize("peer, values, client", [
    # an untrusted peer is the client: its header is ignored, whatever it says
    ("203.0.113.9", [b"1.2.3.4"], "203.0.113.9"),
    ("203.0.113.9", [b"10.0.0.1, 10.0.0.2"], "203.0.113.9"),
    ("::1", [b"1.2.3.4"], "::1"),
    # a trusted peer without the header is the client
    ("10.0.0.5", [], "10.0.0.5"),
    # the rightmost untrusted entry is the client; entries left of it are the client's own
    ("10.0.0.5", [b"6.6.6.6, 198.51.100.7"], "198.51.100.7"),
    ("10.0.0.5", [b"6.6.6.6, 198.51.100.7, 10.1.1.1, 192.0.2.1"], "198.51.100.7"),
    # every entry trusted: the leftmost
    ("10.0.0.5", [b"10.9.9.9, 10.1.1.1"], "10.9.9.9"),
    # several fields are one list, in order (the last field's last entry is the nearest hop)
    ("10.0.0.5", [b"198.51.100.1, 198.51.100.2", b"10.2.2.2"], "198.51.100.2"),
    ("10.0.0.5", [b"198.51.100.1", b"10.3.3.3, 10.2.2.2"], "198.51.100.1"),
    # an entry that is no address stops the walk: the last good address is the client
    ("10.0.0.5", [b"198.51.100.1, garbage"], "10.0.0.5"),
    ("10.0.0.5", [b"198.51.100.1, garbage, 10.2.2.2"], "10.2.2.2"),
    ("10.0.0.5", [b"1.2.3.4, unknown, 10.2.2.2, 10.3.3.3"], "10.2.2.2"),
    ("10.0.0.5", [b"1.2.3.4, 10.0.0.300"], "10.0.0.5"),
    ("10.0.0.5", [b"\xff\xfe, 10.2.2.2"], "10.2.2.2"),
    # empty elements are no entries (RFC 9110 5.6.1)
    ("10.0.0.5", [b"198.51.100.1, , ,", b" ,10.2.2.2,"], "198.51.100.1"),
    # ports and brackets as some proxies write them
    ("10.0.0.5", [b"198.51.100.1:4711"], "198.51.100.1"),
    ("10.0.0.5", [b"[2001:db8:2::7]:443"], "2001:db8:2::7"),
    ("10.0.0.5", [b"[2001:db8:2::7"], "10.0.0.5"),
    # IPv6: entries and peers; an IPv4-mapped address is the IPv4 one (trust too)
    ("2001:db8:1::1", [b"2001:DB8:2::0007, 2001:db8:1::9"], "2001:db8:2::7"),
    ("::ffff:10.0.0.5", [b"198.51.100.1"], "198.51.100.1"),
    ("10.0.0.5", [b"::ffff:198.51.100.1"], "198.51.100.1"),
    ("10.0.0.5", [b"198.51.100.1, ::ffff:10.2.2.2"], "198.51.100.1"),
])
def test_the_client_address(peer, values, client):
    assert client_address(peer, values, TRUSTED)[0] == client


def test_whether_the_peer_is_trusted():
    assert client_address("10.0.0.5", [b"1.2.3.4"], TRUSTED) == ("1.2.3.4", True)
    assert client_address("203.0.113.9", [b"1.2.3.4"], TRUSTED) == ("203.0.113.9", False)
    assert client_address("not-an-ip", [b"1.2.3.4"], TRUSTED) == ("not-an-ip", False)


def test_the_walk_is_bounded():
    trusted_hops = ", ".join(f"10.0.{i // 256}.{i % 256}" for i in range(5000)).encode()
    # a long run of trusted entries: the walk stops after MAX_HOPS at the last good address
    client, _ = client_address("10.0.0.5", [b"1.2.3.4, " + trusted_hops], TRUSTED)
    assert client == f"10.0.{(5000 - MAX_HOPS) // 256}.{(5000 - MAX_HOPS) % 256}"
    # a short chain behind a long client-written prefix is still read right
    assert client_address("10.0.0.5", [trusted_hops + b", 198.51.100.1, 10.1.1.1"],
                          TRUSTED)[0] == "198.51.100.1"


@pytest.mark.parametrize("raw", [b"", b"x", b"1.2.3", b"1.2.3.4.5", b"[::1", b"[::1]x",
                                 b"1.2.3.4:80:90", b"::1]", b"1.2.3.4/8", b"1.2.3.4:junk",
                                 b"1.2.3.4:", b"[::1]:", b"[::1]:8o", b"1.2.3.4:1234567"])
def test_entries_that_are_not_addresses(raw):
    assert parse_entry(raw) is None


@pytest.mark.parametrize("text, parsed", [
    ("1.2.3.4", (4, 0x01020304)), ("::ffff:1.2.3.4", (4, 0x01020304)),
    ("::FFFF:102:304", (4, 0x01020304)), ("::1", (6, 1)), ("fe80::1%eth0", (6, (0xfe80 << 112) | 1)),
    ("01.2.3.4", None), ("1.2.3", None), ("1.2.3.4 ", None), ("1.2.3.4\x00", None),
    ("é", None), ("::1::", None), ("", None),
])
def test_addresses_are_read_strictly(text, parsed):
    from gateway.policy.iprules import parse_ip

    assert parse_ip(text) == parsed
    assert (text in TRUSTED) is False or parsed is not None
