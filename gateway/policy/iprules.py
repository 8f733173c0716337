"""Client address rules: addresses, ranges ``a-b`` and CIDRs, IPv4 and IPv6, looked up in
logarithmic time (merged, sorted intervals and a binary search), not by scanning the list."""
from __future__ import annotations

import ipaddress
from bisect import bisect_right
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton


def _interval(value: str):
    """(version, first, last) of one entry; ValueError saying why it is not one."""
    value = value.strip()
    if "/" in value:
        net = ipaddress.ip_network(value, strict=False)
        return net.version, int(net.network_address), int(net.broadcast_address)
    if "-" in value:
        low, _, high = value.partition("-")
        first, last = ipaddress.ip_address(low.strip()), ipaddress.ip_address(high.strip())
        if first.version != last.version:
            raise ValueError(f"{value!r}: a range within one address family")
        if int(first) > int(last):
            raise ValueError(f"{value!r}: the range ends before it starts")
        return first.version, int(first), int(last)
    address = ipaddress.ip_address(value)
    return address.version, int(address), int(address)


class IpSet:
    """A set of addresses given as addresses, ranges and CIDRs."""

    __slots__ = ("starts", "ends")

    def __init__(self, values):
        intervals = {4: [], 6: []}
        for value in values:
            version, first, last = _interval(value)
            intervals[version].append((first, last))
        self.starts = {}
        self.ends = {}
        for version, spans in intervals.items():
            merged = []
            for first, last in sorted(spans):
                if merged and first <= merged[-1][1] + 1:
                    if last > merged[-1][1]:
                        merged[-1][1] = last
                else:
                    merged.append([first, last])
            self.starts[version] = [m[0] for m in merged]
            self.ends[version] = [m[1] for m in merged]

    def __contains__(self, ip: str) -> bool:
        parsed = parse_ip(ip)
        return parsed is not None and self.has(parsed[0], parsed[1])

    def has(self, version: int, n: int) -> bool:
        """Whether the set holds the address ``n`` of IP ``version`` (as parse_ip gives it)."""
        starts = self.starts[version]
        i = bisect_right(starts, n) - 1
        return i >= 0 and n <= self.ends[version][i]


def parse_ip(text: str):
    """(4, int) or (6, int) of an address, None when ``text`` is not one.  An IPv4-mapped IPv6
    address is the IPv4 one; an IPv6 zone (``%eth0``) is ignored.  (inet_pton: strict, as
    ipaddress is, and several times faster: this runs per request.)"""
    try:
        if ":" in text:
            n = int.from_bytes(inet_pton(AF_INET6, text.partition("%")[0]), "big")
            if n >> 32 == 0xFFFF:
                return 4, n & 0xFFFFFFFF
            return 6, n
        return 4, int.from_bytes(inet_pton(AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def format_ip(version: int, n: int) -> str:
    """The canonical text of an address parse_ip gave."""
    if version == 4:
        return inet_ntop(AF_INET, n.to_bytes(4, "big"))
    return inet_ntop(AF_INET6, n.to_bytes(16, "big"))


def check_values(values) -> list[str]:
    """The problems of a list of address entries (for the validator), one per bad entry."""
    problems = []
    for i, value in enumerate(values):
        try:
            _interval(value)
        except ValueError as exc:
            problems.append(f"[{i}]: not an address, range a-b or CIDR ({exc})")
    return problems


class IpRule:
    """PERMIT (only these addresses may call) or DENY (these may not)."""

    __slots__ = ("permit", "addresses")

    def __init__(self, action: str, values):
        self.permit = action.upper() == "PERMIT"
        self.addresses = IpSet(values)

    def allows(self, ip: str) -> bool:
        return (ip in self.addresses) == self.permit
