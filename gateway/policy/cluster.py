"""Throttling budgets shared by every gateway of a cluster through one Redis, leased in batches.

Redis stays off the per-request path.  Each worker holds, per throttle key, a *lease*: tokens
Redis granted it for the current window.  :meth:`ClusterBudgets.take` spends from the lease
(synchronous, no I/O); when the lease runs below a low-water mark a background fetch refills it,
so steady traffic never waits on Redis.  Only the first call of a key in a window (no lease yet)
waits for one round trip (:meth:`ClusterBudgets.lease`), and concurrent first calls share it.

Counting (the local limiter's semantics exactly): period ``P`` ns, window ``w = (now - offset) //
P``, elapsed ``e``; a sliding estimate ``prev * (P - e) / P + cur`` (fixed windows, for quotas:
``cur``); a call of cost ``c`` passes iff ``estimate + c <= limit``.  Redis holds one integer
count per (key, window), ``<prefix>:rl:{<key, base64url>}:<w>`` (the hash tag keeps a key's
windows in one Redis Cluster slot), expiring 2P + 1 s after its last grant (fixed: P + 1 s).  The
Lua ``acquire`` grants ``min(want, floor(limit - prev*(P-e)/P - cur - next))`` tokens atomically
(``next``: tokens already granted for window w+1, see prefetch below), ``release`` gives unused
tokens back (never below 0, only while the count exists).

Batch size ("want"): the worker's recent allowed rate (an EWMA) times a horizon of
``min(20 ms, P / 10)``, at least ``cost``, at most ``max(cost, limit // 16)``: a busy worker asks
Redis about fifty times a second per key (a short horizon: tokens leased are spent soon after
they are granted, which the sliding estimate assumes; 100 ms let only ~92 % of the limit through
under overload, 20 ms ~98 %), and no worker holds more than 1/16 of the limit at once
(plus the half-batch low-water refill: ~1/10), so a small limit is not hoarded by one worker while
others starve.  When Redis grants nothing the key is *exhausted*: calls are denied locally, and
the worker re-asks in the background at most every ``clamp(P / 20, 10 ms, 1 s)`` (the sliding
estimate frees budget continuously as ``prev`` decays).  Sliding windows are prefetched: within
the horizon before a window ends, a busy worker leases a batch of the next window (checked as at
its start, ``cur + next <= limit``; every grant also counts ``next``), so the window change does
not make its traffic wait.  At a window change the unused tokens of the old window go back to
Redis (background; they lower the next window's ``prev``).

Bounds (while Redis answers):

* Overshoot: none beyond the counting itself.  A worker never spends more than Redis granted it
  for a window, in that window, so at every instant the cluster-wide sliding estimate of what was
  *allowed* is <= ``limit`` (fixed windows: the window's count <= ``limit``) -- apart from clock
  skew: every gateway computes windows from its own wall clock (``time.time_ns()``); a gateway
  whose clock is ``d`` ahead moves to the next window ``d`` early, where up to ``(d / P) * limit``
  more may pass than the estimate at the true time allows (keep clocks NTP-synchronised:
  milliseconds against periods of a second and more).
* Undershoot: tokens leased but not spent when a worker dies (or its release is lost) are not
  reused in that window: at most its held batches (the lease, at most 1.5 batches, and the
  prefetched one), ``<= 3 * max(cost, limit // 16)`` per key and worker; the window after, they
  weigh as ``prev`` and decay.
* Redis restarted (its data lost): the counts restart from zero, so up to one more ``limit`` may
  pass across the window of the restart.  Scripts are loaded again by themselves (EVALSHA, then
  SCRIPT LOAD on NOSCRIPT).

Redis trouble never hangs a request: every call is bounded by ``timeout_ms`` (socket timeouts,
no retries, and ``asyncio.timeout`` around the call, connection included).  A failure of any kind
(refused, reset, timeout, READONLY, OOM...) sets ``up = False``, logs one warning per incident
(never the URL's password), and a background probe (a small SET every 0.5 s, bounded) sets
``up = True`` again and logs the recovery once.  While down no Redis call is made: :meth:`take`
still spends tokens leased before the outage, in their window, and denies keys found exhausted
before it; everything else answers ``NO_LEASE`` and :meth:`lease` returns at once, so a caller
seeing ``NO_LEASE`` with ``up`` False applies ``fail_mode`` (local limits, or refusal).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.metrics import RedisStats

from .lease import HORIZON_NS, Lease

__all__ = ["ClusterBudgets", "ALLOWED", "DENIED", "NO_LEASE", "redacted_url"]

log = logging.getLogger("tollgate.redis")

ALLOWED = 1
DENIED = 0
NO_LEASE = -1
_ALLOWED_PLAIN = (ALLOWED, 0, 0)     # (one tuple for every call that needs no estimate)

MS = 1_000_000
#: no worker asks for more than limit // CAP_DIVISOR tokens at once (but at least ``cost``)
CAP_DIVISOR = 16
#: how long a key's count outlives the window it is ``prev`` for
TTL_MARGIN_MS = 1000

# KEYS: prev, cur, next window counts.  ARGV: limit, P, e (ns), want, ttl (ms), sliding (1/0).
# A fixed window (sliding 0) counts cur only.  Returns {grant, prev, cur (after the grant)}.
ACQUIRE = """
local limit = tonumber(ARGV[1])
local want = tonumber(ARGV[4])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local prev = 0
local used = cur
if ARGV[6] == '1' then
  local p = tonumber(ARGV[2])
  prev = tonumber(redis.call('GET', KEYS[1]) or '0')
  local nxt = tonumber(redis.call('GET', KEYS[3]) or '0')
  used = prev * (p - tonumber(ARGV[3])) / p + cur + nxt
end
local grant = math.floor(limit - used)
if grant > want then grant = want end
if grant > 0 then
  cur = redis.call('INCRBY', KEYS[2], grant)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  grant = 0
end
return {grant, prev, cur}
"""

# KEYS: a window's count.  ARGV: tokens given back.  Returns the tokens actually taken off.
RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = tonumber(ARGV[1])
if n > tonumber(v) then n = tonumber(v) end
if n > 0 then redis.call('DECRBY', KEYS[1], n) end
return n
"""


def redacted_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: what logs may show."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
    except ValueError:
        return "(unparsable url)"


def error_kind(exc: BaseException) -> str:
    """A bounded label for a failed Redis call."""
    if isinstance(exc, (asyncio.TimeoutError, rexc.TimeoutError)):
        return "timeout"
    if isinstance(exc, rexc.ReadOnlyError):
        return "readonly"
    if isinstance(exc, rexc.NoScriptError):
        return "noscript"
    if isinstance(exc, rexc.OutOfMemoryError) or (
            isinstance(exc, rexc.ResponseError) and str(exc).startswith("OOM")):
        return "oom"
    if isinstance(exc, (rexc.ConnectionError, OSError)):
        return "connection"
    return "other"


class ClusterBudgets:
    """Budgets shared by every gateway through one Redis, leased in batches.  One per worker.

    ``metrics``: the worker's :class:`gateway.metrics.WorkerMetrics` (its ``redis`` is set to
    this object's :class:`gateway.metrics.RedisStats`), or None; ``stats`` is kept either way.
    """

    def __init__(self, config, metrics=None, *, prefix: str = "tollgate", max_keys: int = 100_000,
                 max_fetches: int = 64, probe_interval: float = 0.5):
        self.url = redacted_url(config.url)
        self.timeout = config.timeout_ms / 1000.0
        self.fail_mode = config.fail_mode
        self.prefix = prefix
        self.max_keys = max_keys
        self.max_fetches = max_fetches
        self.probe_interval = probe_interval
        self.stats = RedisStats()
        if metrics is not None:
            metrics.redis = self.stats
        self.up = True
        self._closed = False
        self._keys: OrderedDict[bytes, Lease] = OrderedDict()
        self._tasks: set = set()
        self._fetches = 0        # acquire calls under way (bounded by max_fetches)
        # a fetch waits for one of these before its Redis call (and its timeout) starts: a
        # burst of new keys queues here, not in the connection pool, where waiting for a
        # connection would count as Redis being slow
        self._slots = asyncio.Semaphore(max_fetches)
        self._confirm = None     # a probe deciding whether a timeout was an outage
        self._probe = None
        # a blocking pool: a call beyond max_connections waits for one (within its timeout)
        # instead of failing; no retries: a failed call is a failure, the probe does the rest
        self._pool = pool = aioredis.BlockingConnectionPool.from_url(
            config.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), max_connections=max_fetches + 8, timeout=self.timeout)
        self._redis = aioredis.Redis(connection_pool=pool)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release = self._redis.register_script(RELEASE)

    @property
    def up(self) -> bool:
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        self._up = value
        self.stats.up = 1 if value else 0

    # ----------------------------------------------------------------------------------------
    # The synchronous side

    def take(self, key: bytes, limit: int, period_ns: int, cost: int, now_ns: int,
             sliding: bool = True, offset_ns: int = 0,
             detail: bool = True) -> tuple[int, int, int]:
        """Spend ``cost`` from this worker's lease of ``key``: ``(verdict, remaining, reset_ns)``.

        ALLOWED: taken (remaining: an estimate of the cluster's remaining budget, reset_ns: ns
        until the window ends).  DENIED: the cluster budget is exhausted for now (reset_ns: an
        estimate of the ns until a call of this cost may pass).  NO_LEASE: nothing held for this
        key in this window: ``await lease(...)`` then take again (if ``up`` is False, apply the
        fail mode instead).  No I/O; may schedule background fetches and releases.  ``detail``
        False: an ALLOWED answer's ``remaining`` is 0, not estimated (the common case needs no
        estimate).
        """
        rel = now_ns - offset_ns
        w = rel // period_ns
        e = rel - w * period_ns
        st = self._keys.get(key)
        if cost > limit:   # can never pass
            return DENIED, 0, period_ns - e
        if st is None:
            return NO_LEASE, 0, 0
        self._keys.move_to_end(key)
        st.limit, st.period, st.sliding, st.offset = limit, period_ns, sliding, offset_ns
        if w != st.window:
            if w < st.window:      # the clock stepped back: stay in the later window
                w, e = st.window, 0
            else:
                self._roll(st, w)
        if st.tokens >= cost:
            st.tokens -= cost
            st.spent += cost
            if st.pending is None and self._up and not st.exhausted:
                horizon = min(HORIZON_NS, period_ns // 10)
                if st.tokens < st.low or st.tokens < cost:    # low water: refill ahead
                    self._start_fetch(key, st, w, e, self._want(st, cost, now_ns), False)
                elif (sliding and st.next_tokens == 0 and period_ns - e <= horizon
                      and st.rate > 0.0):
                    self._start_fetch(key, st, w + 1, 0, self._want(st, cost, now_ns), False)
            if not detail:
                return _ALLOWED_PLAIN
            return ALLOWED, self._remaining(st, e) + st.tokens, period_ns - e
        if st.exhausted and (now_ns < st.retry_ns or not self._up):
            return DENIED, 0, self._reset(st, e, cost)
        # no lease, or an exhausted one whose re-ask is due: the caller waits for Redis's
        # answer (a call made after Retry-After learns whether budget was freed meanwhile)
        return NO_LEASE, 0, 0

    def spend(self, key, period_ns: int, cost: int, now_ns: int) -> bool:
        """The common case of :meth:`take` (a sliding window), at a fraction of its cost: when
        this worker's lease of ``key`` covers ``cost`` in the current window and neither a
        refill nor the next window's prefetch is due, spend it and say True.  False: nothing
        was done, call :meth:`take` (which decides, and schedules what is due).  The keys'
        recency (for the bound on keys held) is refreshed by take(), at least once a batch."""
        st = self._keys.get(key)
        return st is not None and st.spend(period_ns, cost, now_ns)

    def refund(self, key: bytes, cost: int) -> None:
        """Give back ``cost`` taken by :meth:`take` for a request refused by another dimension
        (kept in the lease; returned to Redis at the window's end if not spent)."""
        st = self._keys.get(key)
        if st is not None:
            st.tokens += cost
            st.spent = max(0, st.spent - cost)

    # ----------------------------------------------------------------------------------------
    # Fetching

    async def lease(self, key: bytes, limit: int, period_ns: int, cost: int, now_ns: int,
                    sliding: bool = True, offset_ns: int = 0) -> None:
        """Fetch a lease of ``key`` for the current window (one round trip, shared by concurrent
        callers).  Bounded by ``timeout_ms``; never raises: a failure marks the budgets down."""
        if not self._up or self._closed or cost > limit:
            return
        rel = now_ns - offset_ns
        w = rel // period_ns
        e = rel - w * period_ns
        st = self._keys.get(key)
        if st is None:
            st = self._add(key, w, now_ns)
        elif w > st.window:
            self._roll(st, w)
        elif w < st.window:      # the clock stepped back: stay in the later window
            w, e = st.window, 0
        st.limit, st.period, st.sliding, st.offset = limit, period_ns, sliding, offset_ns
        if st.tokens >= cost or (st.exhausted and now_ns < st.retry_ns):
            return               # another call fetched meanwhile / take() will deny
        if st.pending is None:
            self._start_fetch(key, st, w, e, self._want(st, cost, now_ns), True)
        task = st.pending
        if task is None:         # too many fetches under way: take() answers NO_LEASE again
            return
        st.waiters += 1
        try:
            # the fetch is bounded by itself; shielded: a caller that goes away does not
            # cancel a grant other callers wait for (or lose its tokens)
            await asyncio.shield(task)
        finally:
            st.waiters -= 1

    async def acquire(self, key: bytes, limit: int, period_ns: int, cost: int, now_ns: int,
                      sliding: bool = True, offset_ns: int = 0) -> tuple[int, int, int]:
        """take(), with the lease() round trip when needed.  NO_LEASE only while Redis is down
        (the caller applies the fail mode)."""
        for _ in range(3):
            verdict = self.take(key, limit, period_ns, cost, now_ns, sliding, offset_ns)
            if verdict[0] != NO_LEASE or not self._up:
                return verdict
            await self.lease(key, limit, period_ns, cost, now_ns, sliding, offset_ns)
        verdict = self.take(key, limit, period_ns, cost, now_ns, sliding, offset_ns)
        if verdict[0] == NO_LEASE and self._up:    # lost the race three times: the budget is short
            return DENIED, 0, self._retry_ns(period_ns)
        return verdict

    def _add(self, key, w, now_ns):
        keys = self._keys
        while len(keys) >= self.max_keys:
            old_key, old = keys.popitem(last=False)
            self._give_back(old_key, old)
        raw = key if isinstance(key, bytes) else key.to_bytes(8, "little")   # (int: a hash)
        tag = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        st = keys[key] = Lease(f"{self.prefix}:rl:{{{tag}}}:", w, now_ns)
        return st

    def _want(self, st, cost, now_ns):
        """The batch to ask for: the recent rate over the horizon, capped (see module doc)."""
        dt = now_ns - st.rate_ns
        if dt >= MS:
            inst = st.spent / dt
            st.rate = inst if st.rate == 0.0 else 0.5 * st.rate + 0.5 * inst
            st.spent = 0
            st.rate_ns = now_ns
        horizon = min(HORIZON_NS, st.period // 10)
        want = max(int(st.rate * horizon + 0.999), cost) + cost * st.waiters
        cap = max(cost, st.limit // CAP_DIVISOR)
        return min(want, cap)

    def _retry_ns(self, period_ns):
        return min(max(period_ns // 20, 10 * MS), 1000 * MS)

    def _start_fetch(self, key, st, window, e, want, foreground):
        if self._fetches >= self.max_fetches and not foreground:
            return                # background refills wait for a later call
        st.pending = task = asyncio.get_running_loop().create_task(
            self._fetch(key, st, window, e, want))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, key, st, window, e, want):
        self._fetches += 1
        try:
            async with self._slots:
                # the calls that joined this fetch since it was started (the same turn of the
                # loop, typically) are asked for too: a burst of first calls is one round trip
                want = max(want, min(st.waiters + 1, max(1, st.limit // CAP_DIVISOR)))
                period = st.period
                ttl = (2 * period if st.sliding else period) // MS + TTL_MARGIN_MS
                tag = st.tag
                started = time.perf_counter()
                async with asyncio.timeout(self.timeout):
                    grant, prev, cur = await self._acquire(
                        keys=[f"{tag}{window - 1}", f"{tag}{window}", f"{tag}{window + 1}"],
                        args=[st.limit, period, e, want, ttl, 1 if st.sliding else 0])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("acquire", exc)
            return
        finally:
            self._fetches -= 1
            st.pending = None
        self.stats.observe("acquire", time.perf_counter() - started)
        self.stats.leases += 1
        self.stats.granted += grant
        self._credit(key, st, window, want, grant, prev, cur)

    def _credit(self, key, st, window, want, grant, prev, cur):
        if window == st.window:
            st.tokens += grant
            st.prev, st.cur = prev, cur
            st.low = want // 2
            if grant == 0:
                st.exhausted = True
                st.retry_ns = time.time_ns() + self._retry_ns(st.period)
            else:
                st.exhausted = False
        elif window == st.window + 1:
            st.next_tokens += grant
        elif grant:
            self._start_release(st.tag, window, grant)

    def _roll(self, st, w):
        """The window changed: the old lease's leftovers go back to Redis."""
        old = st.window
        if st.tokens:
            self._start_release(st.tag, old, st.tokens)
        if w == old + 1:
            st.tokens = st.next_tokens
            st.prev, st.cur = st.cur, 0
        else:
            if st.next_tokens:
                self._start_release(st.tag, old + 1, st.next_tokens)
            st.tokens = 0
            st.prev = st.cur = 0
        st.next_tokens = 0
        st.window = w
        st.exhausted = False
        st.retry_ns = 0

    def _give_back(self, key, st):
        if st.tokens:
            self._start_release(st.tag, st.window, st.tokens)
        if st.next_tokens:
            self._start_release(st.tag, st.window + 1, st.next_tokens)
        st.tokens = st.next_tokens = 0

    def _start_release(self, tag, window, n):
        if not self._up or self._closed or len(self._tasks) >= 4 * self.max_fetches:
            return   # lost tokens: undershoot only (see the module doc)
        task = asyncio.get_running_loop().create_task(self._release_one(tag, window, n))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_one(self, tag, window, n):
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                given = await self._release(keys=[f"{tag}{window}"], args=[n])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("release", exc)
            return
        if not isinstance(given, int):      # (not our script's answer: not a Redis we know)
            self._failed("release", TypeError(f"unexpected answer {type(given).__name__}"))
            return
        self.stats.observe("release", time.perf_counter() - started)
        self.stats.returned += given

    # ----------------------------------------------------------------------------------------
    # Estimates for headers

    def _remaining(self, st, e):
        if st.sliding:
            used = st.prev * (st.period - e) / st.period + st.cur
        else:
            used = st.cur
        return max(0, int(st.limit - used))

    def _reset(self, st, e, cost):
        """ns until a call of ``cost`` may pass, from the counts last seen (no new calls)."""
        p, limit = st.period, st.limit
        if not st.sliding:
            return p - e
        room = limit - st.cur - cost
        if room >= 0 and st.prev > 0:       # within this window, as prev decays
            return max(int(p - room * p / st.prev) - e, self._retry_ns(p))
        # next window: prev' = cur, decaying from its start
        later = max(0, int(p - (limit - cost) * p / st.cur)) if st.cur > 0 else 0
        return p - e + later

    # ----------------------------------------------------------------------------------------
    # Failures and recovery

    def _failed(self, operation, exc):
        kind = error_kind(exc)
        self.stats.error(kind)
        if kind == "timeout" and self._up and not self._closed:
            # one slow answer is not an outage: a burst of work on this worker's own loop can
            # delay reading a reply past timeout_ms.  A probe decides: down only if it is slow
            # or failing too (meanwhile callers try again, each bounded)
            if self._confirm is None or self._confirm.done():
                self._confirm = asyncio.get_running_loop().create_task(
                    self._confirm_outage(operation, exc))
            return
        self._down(operation, exc)

    async def _confirm_outage(self, operation, exc):
        try:
            await self._check()
        except asyncio.CancelledError:
            raise
        except Exception as probe_exc:
            self.stats.error(error_kind(probe_exc))
            self._down(operation, exc)

    async def _check(self):
        """One probe of Redis (bounded): a write and a script, as the budgets need."""
        key = f"{self.prefix}:probe"
        async with asyncio.timeout(self.timeout):
            # a write: a read-only replica or a full Redis is not "up"
            await self._redis.set(key, b"1", px=10_000)
            # and a script (taking nothing off): a Redis that refuses the budgets' scripts
            # (an ACL without scripting) is not "up" either, or every probe would find it up
            # and the next lease down again, twice a second
            await self._release(keys=[key], args=[0])

    def _down(self, operation, exc):
        kind = error_kind(exc)
        if self._up and not self._closed:
            self.up = False
            action = ("counted by each gateway alone" if self.fail_mode == "open"
                      else "refused")
            log.warning("Redis at %s failed (%s on %s: %s); throttled calls are %s until it "
                        "answers again", self.url, kind, operation,
                        str(exc) or type(exc).__name__, action)
            if self._probe is None or self._probe.done():
                self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self):
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            started = time.perf_counter()
            try:
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.error(error_kind(exc))
                continue
            self.stats.observe("probe", time.perf_counter() - started)
            self.up = True
            log.warning("Redis at %s answers again; throttles are counted across the cluster",
                        self.url)
            return

    async def close(self) -> None:
        """Return unused tokens (best effort, bounded), stop the probe, close the connections."""
        if self._closed:
            return
        if self._up:
            for key, st in self._keys.items():
                self._give_back(key, st)
        self._closed = True
        pending = [t for t in self._tasks]
        if pending:
            await asyncio.wait(pending, timeout=max(self.timeout, 0.5))
        checks = [t for t in (self._probe, self._confirm) if t is not None]
        for task in list(self._tasks) + checks:
            task.cancel()
        if checks:
            await asyncio.gather(*checks, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._keys.clear()
        await self._redis.aclose()
        await self._pool.disconnect()

    # for tests and introspection
    def held(self, key: bytes) -> tuple[int, int, int] | None:
        """(window, tokens, next window's tokens) held for key, or None."""
        st = self._keys.get(key)
        return None if st is None else (st.window, st.tokens, st.next_tokens)
