"""Client address rules: addresses, ranges ``a-b`` and CIDRs, IPv4 and IPv6, looked up in
logarithmic time (merged, sorted intervals and a binary search), not by scanning the list."""
from __future__ import annotations

import ipaddress
from bisect import bisect_right


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
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        return self.has(address)

    def has(self, address) -> bool:
        """Whether the set holds ``address`` (an ipaddress object: parsed once by the caller)."""
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        starts = self.starts[address.version]
        n = int(address)
        i = bisect_right(starts, n) - 1
        return i >= 0 and n <= self.ends[address.version][i]


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
