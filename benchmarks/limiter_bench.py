"""The throttle counter alone: fastpath.limiter compiled against its interpreted twin.

Each form takes calls from a table in a shared memory map, as a worker does: one hot key (an
API's own dimension), and keys spread over 10,000 callers (a per-address dimension).  The
interpreted form is measured as the gateway runs it, locking the table's file around each
update (other workers may share it), and without the lock for reference.  Reported:
nanoseconds per take of each form and the ratio (compiled against the locked interpreted form,
which is what the gateway would run).  Writes the ``limiter`` section of RESULTS.md
(``--no-write`` to print only).  No network.
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import time

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

SLOTS = 1 << 16
S = 1_000_000_000


def _table(mod, locked):
    fd = os.memfd_create("limiter-bench", 0)
    size = mod.table_size(SLOTS)
    os.ftruncate(fd, size)
    buf = mmap.mmap(fd, size)
    mod.init_table(buf, SLOTS)
    return mod.CounterTable(buf, fd if locked else -1), fd


def measure(mod, locked, keys, seconds):
    table, fd = _table(mod, locked)
    take = table.take
    n, started, now = 0, time.perf_counter(), 10 * S
    try:
        while True:
            for key in keys:
                take(key, 2_000_000_000, S, 1, now, True)
            n += len(keys)
            now += 1_000
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return elapsed / n * 1e9
    finally:
        os.close(fd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.limiter_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="per shape and form (default 1)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from fastpath import load
    pure, compiled = load("limiter", False), load("limiter", True)
    shapes = {"one hot key": [pure.hash_key(b"api")] * 1000,
              "10,000 callers": [pure.hash_key(b"ip\0%d" % i) for i in range(10_000)]}
    forms = {"interpreted, locked": (pure, True), "interpreted, no lock": (pure, False),
             "compiled": (compiled, False)}
    rows = []
    for name, keys in shapes.items():
        times = {f: [] for f in forms}
        for rep in range(args.reps):
            order = list(forms) if rep % 2 == 0 else list(reversed(forms))
            for form in order:
                mod, locked = forms[form]
                times[form].append(measure(mod, locked, keys, args.seconds))
        best = {f: min(v) for f, v in times.items()}
        rows.append((name, best))
    lines = ["## The throttle counter: compiled vs interpreted", "",
             f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             f"fastpath.limiter's take() on a table in a shared memory map ({SLOTS:,} slots), "
             f"sliding windows; {args.seconds:.0f} s per shape and form, {args.reps} "
             "interleaved reps (best of each).  The interpreted form locks the table around each "
             "update as the gateway runs it (workers share the table); the unlocked figure is "
             "for reference.", "",
             "| keys | interpreted, locked ns/take | interpreted, no lock | compiled | "
             "ratio (locked / compiled) |", "|---|---:|---:|---:|---:|"]
    for name, best in rows:
        lines.append(f"| {name} | {best['interpreted, locked']:,.0f} | "
                     f"{best['interpreted, no lock']:,.0f} | {best['compiled']:,.0f} | "
                     f"{best['interpreted, locked'] / best['compiled']:.0f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("limiter", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
