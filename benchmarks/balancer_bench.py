"""The load balancer alone: fastpath.balancer compiled against its interpreted twin.

Each form picks a member and releases it again (a request's whole use of the balancer), for
each kind (wrr, wlc, source_hash, uri_hash) over pools of 2 and 16 members of unequal weights,
the hash kinds with keys spread over 10,000 callers, every pick without a retry's exclusions.
Reported: nanoseconds per pick + release of each form and the ratio (target: compiled >= 3x the
interpreted form).  Writes the ``balancer`` section of RESULTS.md (``--no-write`` to print
only).  No network.
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

SIZES = (2, 16)
TARGET = 3.0


def measure(mod, kind, size, keys, seconds):
    b = mod.Balancer(mod.KINDS[kind], [1 + (i % 4) * 3 for i in range(size)], [False] * size,
                     [b"10.0.0.%d:8080" % i for i in range(size)])
    pick, release = b.pick, b.release
    n, started = 0, time.perf_counter()
    while True:
        for key in keys:
            release(pick(key, None))
        n += len(keys)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / n * 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.balancer_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="per case and form (default 1)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from fastpath import load
    forms = {"interpreted": load("balancer", False), "compiled": load("balancer", True)}
    keys = [forms["compiled"].hash_bytes(b"10.1.%d.%d" % divmod(i, 256)) for i in range(10_000)]
    rows = []
    for kind in forms["compiled"].KINDS:
        for size in SIZES:
            times = {f: [] for f in forms}
            for rep in range(args.reps):
                for form in (list(forms) if rep % 2 == 0 else list(reversed(forms))):
                    times[form].append(measure(forms[form], kind, size, keys, args.seconds))
            rows.append((kind, size, {f: min(v) for f, v in times.items()}))
    worst = min(best["interpreted"] / best["compiled"] for _k, _s, best in rows)
    lines = ["## The load balancer: compiled vs interpreted", "",
             f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             f"fastpath.balancer: pick() then release() of the member picked, no retry "
             f"exclusions; weights 1, 4, 7, 10, 1, ...; the hash kinds over 10,000 keys; "
             f"{args.seconds:g} s per case and form, {args.reps} interleaved reps (best of each).",
             "", "| kind | members | interpreted ns/pick+release | compiled | ratio |",
             "|---|---:|---:|---:|---:|"]
    for kind, size, best in rows:
        lines.append(f"| {kind} | {size} | {best['interpreted']:,.0f} | {best['compiled']:,.0f} | "
                     f"{best['interpreted'] / best['compiled']:.1f}x |")
    lines += ["", f"- compiled / interpreted: {worst:.1f}x at worst (target >= {TARGET:g}x: "
              f"{'met' if worst >= TARGET else 'NOT met'})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("balancer", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
