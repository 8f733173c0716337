"""Drive N ClusterBudgets (standing for N workers or gateways sharing one Redis) at a multiple of
a throttle's limit, and report what passed against the limit: the accuracy of cluster throttling.

    python -m tests.support.budget_load redis://127.0.0.1:6379/0 --workers 4 --limit 1000 \\
        --period 1 --seconds 5 --overload 3

Every simulated worker offers ``overload * limit / workers`` calls per period, evenly (in ticks
of 5 ms), through ``ClusterBudgets.acquire``; the report has the calls allowed per window, the
total against ``limit * seconds / period``, and the largest sliding estimate of allowed calls seen
at any allowed call (never above ``limit`` when the budgets hold).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

from gateway.config.model import Redis
from gateway.policy.cluster import ALLOWED, DENIED, ClusterBudgets

TICK = 0.005


async def drive(url: str, *, workers: int = 4, limit: int = 200, period_ns: int = 500_000_000,
                seconds: float = 3.0, overload: float = 3.0, sliding: bool = True,
                cost: int = 1, key: bytes = b"load", timeout_ms: int = 500,
                prefix: str = "tollgate") -> dict:
    budgets = [ClusterBudgets(Redis(url=url, timeout_ms=timeout_ms), prefix=prefix)
               for _ in range(workers)]
    allowed: list[int] = []          # ns of each allowed call
    counts = {"denied": 0, "no_lease": 0}
    per_tick = overload * limit / workers * (TICK * 1e9 / period_ns) / cost
    start = time.monotonic()

    async def worker(b: ClusterBudgets):
        owed = 0.0
        next_tick = time.monotonic()
        while time.monotonic() - start < seconds:
            owed += per_tick
            while owed >= 1.0:
                owed -= 1.0
                now = time.time_ns()
                verdict, _, _ = await b.acquire(key, limit, period_ns, cost, now, sliding)
                if verdict == ALLOWED:
                    allowed.append(now)
                elif verdict == DENIED:
                    counts["denied"] += 1
                else:
                    counts["no_lease"] += 1
            next_tick += TICK
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    try:
        await asyncio.gather(*(worker(b) for b in budgets))
    finally:
        for b in budgets:
            await b.close()
    return report(allowed, limit, period_ns, cost, sliding, seconds, counts,
                  stats=[b.stats.export() for b in budgets])


def report(allowed, limit, period_ns, cost, sliding, seconds, counts, stats=()):
    allowed = sorted(allowed)
    windows = Counter(t // period_ns for t in allowed)
    # the estimate at each allowed call, counting it and every call allowed before it
    worst = 0.0
    seen: Counter = Counter()
    for t in allowed:
        w, e = divmod(t, period_ns)
        seen[w] += cost
        est = seen[w] + (seen[w - 1] * (period_ns - e) / period_ns if sliding else 0)
        worst = max(worst, est)
    full = sorted(windows)[1:-1]     # the first and last windows are partial
    return {
        "allowed": len(allowed) * cost,
        "expected": limit * seconds * 1e9 / period_ns,
        "per_window": [windows[w] * cost for w in sorted(windows)],
        "full_window_mean": (sum(windows[w] for w in full) * cost / len(full)) if full else None,
        "worst_estimate": worst,
        "limit": limit,
        "denied": counts["denied"],
        "no_lease": counts["no_lease"],
        "leases": sum(s["leases"] for s in stats),
        "returned": sum(s["returned"] for s in stats),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--period", type=float, default=1.0, help="seconds")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--overload", type=float, default=3.0)
    ap.add_argument("--fixed", action="store_true", help="fixed windows (quotas)")
    args = ap.parse_args(argv)
    result = asyncio.run(drive(args.url, workers=args.workers, limit=args.limit,
                               period_ns=int(args.period * 1e9), seconds=args.seconds,
                               overload=args.overload, sliding=not args.fixed))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
