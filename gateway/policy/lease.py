"""What one worker holds of one cluster throttle key: its lease (gateway/policy/cluster.py).

Its own module, compiled (gateway/policy/lease.pxd), because :meth:`Lease.spend` is on the hot
path of every throttled call in cluster mode: the common case (tokens left in the current
window, nothing due) is decided here, in C, and everything else by ClusterBudgets.take.
"""
from __future__ import annotations

#: the batch horizon: a lease lasts about this long at the recent rate (or P/10 if shorter);
#: measured with tests/support/budget_load.py (4 workers, 3x overload): 100 ms -> 92 % of the
#: limit let through, 50 ms -> 96 %, 20 ms -> 98 %
HORIZON_NS = 20_000_000
_HORIZON = HORIZON_NS       # (the compiled form's C copy)


class Lease:
    """A worker's lease of one key (attribute types: gateway/policy/lease.pxd)."""

    def __init__(self, tag, window, now_ns):
        self.tag = tag
        self.window = window
        self.tokens = 0          # left of this worker's lease of `window`
        self.next_tokens = 0     # prefetched for window + 1
        self.prev = 0            # counts seen at the last grant (estimates of reset, remaining)
        self.cur = 0
        self.rate = 0.0          # EWMA of the allowed rate, tokens per ns
        self.spent = 0           # tokens spent since rate_ns
        self.rate_ns = now_ns
        self.low = 0             # refill below this many tokens
        self.pending = None      # the fetch under way (a task)
        self.waiters = 0         # calls waiting for it
        self.exhausted = False   # Redis granted nothing in this window: deny locally
        self.retry_ns = 0        # when to re-ask Redis after a denial
        self.limit = 0
        self.period = 0
        self.offset = 0
        self.sliding = True

    def spend(self, period_ns, cost, now_ns):
        """Spend ``cost`` when the lease covers it in the current window of a sliding
        ``period_ns`` and neither a refill nor the next window's prefetch is due: True.
        False: nothing was done (ClusterBudgets.take decides, and schedules what is due)."""
        if self.period != period_ns or not self.sliding or self.offset != 0:
            return False
        w = now_ns // period_ns
        left = self.tokens - cost
        if w != self.window or left < 0:
            return False
        if self.pending is None:        # (with a fetch under way, nothing more can be due)
            if left < self.low:
                return False            # (a refill is due)
            horizon = _HORIZON if _HORIZON < period_ns // 10 else period_ns // 10
            if self.next_tokens == 0 and period_ns - (now_ns - w * period_ns) <= horizon:
                return False            # (the next window's prefetch is due)
        self.tokens = left
        self.spent += cost
        return True
