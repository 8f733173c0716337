"""The client's address behind trusted proxies (``trusted_proxies``).

The socket peer is the client unless it is a trusted proxy.  Then ``X-Forwarded-For`` is read
from the right (each proxy appends the address it received the request from): addresses that
are themselves trusted proxies are skipped, the first untrusted one is the client.  When every
entry is trusted the leftmost is the client.  An entry that is not an address stops the walk:
what lies to its left was written by someone the gateway cannot vouch for, so the client is the
last good address (the entry to its right, or the peer).  Several ``X-Forwarded-For`` fields
are one list, in order.  A peer that is not trusted is the client and its header is ignored
entirely: a client cannot move its own address by sending the header.

Only exchanges of a configuration with ``trusted_proxies`` pay for this (the pipeline calls
:func:`resolve_client` only then).
"""
from __future__ import annotations

from .iprules import format_ip, parse_ip

#: entries of X-Forwarded-For walked at most (from the right): a chain of trusted proxies is
#: short; a longer walk stops at the last good address found
MAX_HOPS = 16

_FIELD = b"x-forwarded-for"


def _port(text: bytes) -> bool:
    """Is ``text`` a ':' followed by a port (1 to 5 digits)?"""
    return text[:1] == b":" and 1 < len(text) <= 6 and text[1:].isdigit()


def parse_entry(raw: bytes):
    """(version, int) of one X-Forwarded-For element (``1.2.3.4``, ``1.2.3.4:80``,
    ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:80``), or None when it is not one."""
    if raw[:1] == b"[":
        end = raw.find(b"]")
        if end < 0 or (end + 1 < len(raw) and not _port(raw[end + 1:])):
            return None
        raw = raw[1:end]
    elif raw.count(b":") == 1:          # an IPv4 address with a port
        raw, _, port = raw.partition(b":")
        if not _port(b":" + port):
            return None
    try:
        return parse_ip(raw.decode("ascii"))
    except UnicodeDecodeError:
        return None


def client_address(peer: str, values, trusted) -> tuple[str, bool]:
    """(the client's address, whether the peer is trusted) for a request from ``peer`` carrying
    the X-Forwarded-For field ``values`` (bytes, in order), ``trusted`` an IpSet."""
    parsed = parse_ip(peer)
    if parsed is None or not trusted.has(parsed[0], parsed[1]):
        return peer, False
    client = peer
    walked = 0
    for value in reversed(values):
        for raw in reversed(value.split(b",")):
            raw = raw.strip(b" \t")
            if not raw:
                continue                # an empty list element (RFC 9110 5.6.1) is no entry
            walked += 1
            if walked > MAX_HOPS:
                return client, True
            parsed = parse_entry(raw)
            if parsed is None:
                return client, True
            # (an IPv4 entry inet_pton accepted is canonical text already)
            client = (raw.decode("ascii") if parsed[0] == 4 and b":" not in raw
                      else format_ip(parsed[0], parsed[1]))
            if not trusted.has(parsed[0], parsed[1]):
                return client, True
    return client, True


def resolve_client(ex, trusted) -> None:
    """Set ``ex.client_ip`` (and whether the client's X-Forwarded-For chain is forwarded to the
    backend: only from a trusted peer) before any stage reads them."""
    values = ex.head.get_all(_FIELD)
    client, peer_trusted = client_address(ex.client_ip, values, trusted)
    ex.client_ip = client
    ex.forward_chain = peer_trusted
