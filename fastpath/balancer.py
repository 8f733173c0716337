"""Load balancing: which member of a backend pool serves the next request.

A :class:`Balancer` holds ``n`` members (0 .. n-1), each with a **weight** (0 to 2**40; 0: never
picked), a **backup** flag and a **name** (its stable identity, e.g. ``b"10.0.0.1:8080"``).
Members are **up** until :meth:`Balancer.set_up` says otherwise (health checks).  A pick
considers the *eligible* members: weight > 0, up, and not in ``tried`` (the members a retry of
the same request already tried).  Primaries (backup false) come first: backups are picked only
when no primary is eligible, and the next pick after a primary is eligible again goes back to
the primaries.  When nobody is eligible, :meth:`Balancer.pick` returns :data:`NONE`.  A pick
counts its member *in flight* until :meth:`Balancer.release`.

The algorithms (``kind``):

``WRR`` -- smooth weighted round robin (nginx's).  At each pick every eligible member adds its
    weight to its current value; the largest current value is picked (ties: the lowest index)
    and the eligible members' total weight is taken off it.  While the eligible members stay
    the same (``W`` their total weight), every ``W`` picks give each member exactly its weight's
    number of picks (the current values are then all back where they started), and the picks
    are interleaved: after ``t`` picks a member of weight ``w`` has had fewer than
    ``t * w / W + 1`` -- it never runs ahead of its share by a whole pick, so the heaviest member
    gets no bursts (weights 5, 1, 1 give a a b a c a a, where a plain round robin gives
    a a a a a b c).  Its runs are not always the shortest possible: nginx's order puts the
    end of one cycle next to the start of the next (4 a's in a row above, where 3 would do).
    Deterministic.

``WLC`` -- weighted least connections.  The eligible member with the lowest
    ``(inflight + 1) / weight`` is picked, compared exactly without division
    (``(a + 1) * wb < (b + 1) * wa``); among equal members the search starts one member further
    at each pick, so equal members share the picks evenly.

``SOURCE_HASH`` / ``URI_HASH`` -- consistent hashing on ``key_hash`` (the caller hashes the
    client address or the URI with :func:`hash_bytes`).  Each tier (primaries, backups) has a
    ring of 64-bit points, each owned by a member: a member's points are
    ``blake2b(name + b"#" + str(k))`` for ``k`` = 0, 1, ... -- they depend on its name only, so
    a member keeps its points whatever the other members are.  A tier of ``m`` members
    (weight > 0) has about ``100 * m`` points, a member's share of them proportional to its
    weight (at least one point).  A key goes to the owner of the first point >= ``key_hash``
    (wrapping round), or, when that owner is not eligible, to the next eligible owner
    clockwise.  A member's share of the keys follows its weight's share closely but not
    exactly (the arcs between points vary: with ~100 points a member, typically within a tenth
    of its share).  The same key goes to the same member, and a member that is down, tried or
    removed gives up only its own keys (spread over the others by the ring); every other key
    stays where it was.  A member added takes about ``1 / (m + 1)`` of the keys, all from
    others, and moves no other key.  (With unequal weights a member's number of points is its
    share of the tier's: a change of membership adds or drops a few points of the others too.)

Both forms (this interpreted twin and the compiled ``fastpath/balancer.pyx``) give the same picks
for the same calls.  The compiled form keeps everything in C arrays and allocates nothing per
pick.  WRR's current values are reset to 0 (all members) in the rare event that one of them
passes +-2**61, so they always fit 64 bits; both forms do it alike.

fastpath does no I/O: health and the end of a request are told to the balancer by its caller.
"""
from __future__ import annotations

from bisect import bisect_left
from hashlib import blake2b
from operator import index as _index

WRR, WLC, SOURCE_HASH, URI_HASH = 0, 1, 2, 3
NONE = -1                           # pick(): no member can serve
KINDS = {"wrr": WRR, "wlc": WLC, "source_hash": SOURCE_HASH, "uri_hash": URI_HASH}

MAX_MEMBERS = 4096
MAX_WEIGHT = 1 << 40
POINTS_PER_MEMBER = 100             # ring points per member of a tier, on average

_MASK64 = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_CLAMP = 1 << 61                    # WRR: current values are reset before they could overflow


def hash_bytes(data: bytes) -> int:
    """A 64-bit hash of ``data`` for the hash kinds: FNV-1a (64-bit), then murmur3's fmix64
    finaliser (FNV alone leaves similar keys -- addresses, URIs -- on nearby points)."""
    if not isinstance(data, bytes):
        raise TypeError(f"hash_bytes() takes bytes, not {type(data).__name__}")
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    h ^= h >> 33
    return h


def _checked(kind, weights, backup, names):
    """The members as (weights, backup flags, names), or ValueError saying what is wrong."""
    if kind not in (WRR, WLC, SOURCE_HASH, URI_HASH):
        raise ValueError(f"balancer kind {kind!r} is not one of {sorted(KINDS.values())} "
                         f"({', '.join(KINDS)})")
    weights, backup, names = list(weights), [bool(b) for b in backup], list(names)
    n = len(weights)
    if len(backup) != n or len(names) != n:
        raise ValueError(f"a balancer needs one weight, backup flag and name per member: got "
                         f"{n} weights, {len(backup)} backup flags, {len(names)} names")
    if not 1 <= n <= MAX_MEMBERS:
        raise ValueError(f"a balancer has 1 to {MAX_MEMBERS} members, not {n}")
    seen = {}
    for i in range(n):
        w = weights[i]
        if isinstance(w, bool) or not isinstance(w, int):
            raise ValueError(f"member {i}: weight {w!r} is not an integer")
        if not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"member {i}: weight {w} is out of range (0 to 2**40)")
        name = names[i]
        if not isinstance(name, bytes) or not name:
            raise ValueError(f"member {i}: name {name!r} is not a non-empty bytes string")
        if name in seen:
            raise ValueError(f"member {i}: name {name!r} is also member {seen[name]}'s "
                             "(a name identifies one member)")
        seen[name] = i
    return weights, backup, names


def _ring(members, weights, names):
    """The consistent-hash ring of one tier: (sorted points, owner of each point)."""
    total = sum(weights[i] for i in members)
    scale = POINTS_PER_MEMBER * len(members)
    entries = []
    for i in members:
        count = max(1, (scale * weights[i] + total // 2) // total)
        for k in range(count):
            digest = blake2b(names[i] + b"#%d" % k, digest_size=8).digest()
            entries.append((int.from_bytes(digest, "big"), names[i], i))
    entries.sort()                  # (a point shared by two members: by name, not by index)
    return [e[0] for e in entries], [e[2] for e in entries]


class Balancer:
    """The members of one pool and the state of their balancing (read the module docstring)."""

    __slots__ = ("n", "kind", "_w", "_backup", "_up", "_inflight", "_cur", "_tiers", "_live",
                 "_rings", "_rr")

    def __init__(self, kind: int, weights, backup, names):
        weights, backup, names = _checked(kind, weights, backup, names)
        self.n = len(weights)
        self.kind = kind
        self._w = weights
        self._backup = backup
        self._up = [True] * self.n
        self._inflight = [0] * self.n
        self._cur = [0] * self.n
        # the members that can ever be picked, by tier (primaries, backups), in index order
        self._tiers = ([i for i in range(self.n) if weights[i] and not backup[i]],
                       [i for i in range(self.n) if weights[i] and backup[i]])
        self._live = [len(t) for t in self._tiers]      # of them, those up
        self._rr = 0
        self._rings = tuple(_ring(t, weights, names) if t else ([], [])
                            for t in self._tiers) if kind in (SOURCE_HASH, URI_HASH) else None

    def _member(self, i):
        i = _index(i)
        if not 0 <= i < self.n:
            raise IndexError(f"member {i} is not in this balancer (0 to {self.n - 1})")
        return i

    def set_up(self, i: int, up: bool) -> None:
        """Health: a member that is down gets no pick until it is up again."""
        i = self._member(i)
        up = bool(up)
        if self._up[i] != up:
            self._up[i] = up
            if self._w[i]:
                self._live[self._backup[i]] += 1 if up else -1

    def is_up(self, i: int) -> bool:
        return self._up[self._member(i)]

    def inflight(self, i: int) -> int:
        """The requests picked for member ``i`` and not yet released."""
        return self._inflight[self._member(i)]

    def release(self, i: int) -> None:
        """A request picked for member ``i`` ended (answered, failed or abandoned)."""
        i = self._member(i)
        if self._inflight[i] > 0:
            self._inflight[i] -= 1

    def pick(self, key_hash: int, tried) -> int:
        """The member for the next request (counted in flight), or NONE.  ``key_hash``: the
        request's key for the hash kinds (ignored by the others); ``tried``: None or a list of
        the members to exclude."""
        if not 0 <= key_hash <= _MASK64:
            raise OverflowError("key_hash must be a 64-bit unsigned integer")
        if tried:
            n = self.n
            for t in tried:
                if not 0 <= _index(t) < n:
                    raise IndexError(f"tried member {t} is not in this balancer (0 to {n - 1})")
        else:
            tried = ()
        self._rr += 1
        up = self._up
        kind = self.kind
        best = NONE
        for tier in (0, 1):
            if not self._live[tier]:
                continue
            members = self._tiers[tier]
            if kind == WRR:
                cur, w = self._cur, self._w
                total = 0
                top = 0
                for i in members:
                    if up[i] and i not in tried:
                        v = cur[i] + w[i]
                        cur[i] = v
                        total += w[i]
                        if best < 0 or v > top:
                            best, top = i, v
                if best >= 0:
                    cur[best] = top - total
                    if top > _CLAMP or top - total < -_CLAMP:
                        self._cur = [0] * self.n
            elif kind == WLC:
                inflight, w = self._inflight, self._w
                size = len(members)
                j = self._rr % size
                for _ in range(size):
                    i = members[j]
                    if up[i] and i not in tried:
                        if best < 0 or (inflight[i] + 1) * w[best] < (inflight[best] + 1) * w[i]:
                            best = i
                    j += 1
                    if j == size:
                        j = 0
            else:
                points, owners = self._rings[tier]
                size = len(points)
                j = bisect_left(points, key_hash)
                for _ in range(size):
                    if j == size:
                        j = 0
                    i = owners[j]
                    if up[i] and i not in tried:
                        best = i
                        break
                    j += 1
            if best >= 0:
                self._inflight[best] += 1
                return best
        return NONE
