"""The SDK-HMAC-SHA256 check alone: fastpath.sdksign compiled against its interpreted twin.

Requests are signed with the vendor's SDK (``huaweicloudsdkcore``), parsed once by
fastpath.http1, then each form verifies them in a loop (canonical request, hash, HMAC,
constant-time compare; the date is checked against the signing time).  Three shapes: a GET
with a short path and no query, a GET with a long encoded path and a query of eight
parameters, and a POST whose body hash is given (as when it was hashed while it streamed).
Reported: microseconds per check of each form and the ratio (target: compiled >= 3x).  Writes
the ``sdksign`` section of RESULTS.md (``--no-write`` to print only).  No network.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time

from benchmarks import run as harness
from benchmarks.results import command_line, write_section

TARGET = 3.0


def _requests():
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer
    from urllib.parse import quote

    body = b'{"order": 4711, "items": [1, 2, 3], "note": "bench"}'
    shapes = {
        "GET /v1/items": dict(method="GET", path="/v1/items", query=[]),
        "GET, encoded path, 8 query parameters": dict(
            method="GET", path="/v1/apps/12345/orders/%E4%BD%A0%E5%A5%BD/items/a%20b",
            query=[("limit", "10"), ("offset", "20"), ("q", "hello world"), ("sort", "-created"),
                   ("filter", "a,b"), ("lang", "zh-CN"), ("x", "1"), ("y", "")]),
        "POST JSON (body hash given)": dict(method="POST", path="/v1/orders", query=[],
                                            body=body),
    }
    out = {}
    for name, s in shapes.items():
        headers = {"Content-Type": "application/json"} if s.get("body") else {}
        req = SdkRequest(method=s["method"], schema="http", host="127.0.0.1:8080",
                         resource_path=s["path"], query_params=s["query"],
                         header_params=headers, body=s.get("body", b""))
        signed = Signer(BasicCredentials("bench-key", "bench-secret")).sign(req)
        target = quote(signed.uri, safe="/%?&=~!$'()*+,;:@")
        lines = [f"{signed.method} {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in signed.header_params.items()]
        if s.get("body"):
            lines.append(f"Content-Length: {len(s['body'])}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + s.get("body", b"")
        out[name] = (raw, hashlib.sha256(s["body"]).hexdigest().encode() if s.get("body") else None)
    return out


def measure(sdksign, http1, raw, body_hash, seconds):
    parser = http1.RequestParser()
    parser.feed(raw)
    assert parser.next() == http1.HEAD
    head = parser.head
    path, _, query = head.target().partition(b"?")
    method = head.method.encode()
    signed = sdksign.parse_authorization(head.get(b"authorization"))
    now = sdksign.parse_date(head.get(b"x-sdk-date"))
    verify = sdksign.verify
    has_body = body_hash is not None
    key = sdksign.prepare_secret(b"bench-secret")     # (made once per app at load)
    verify(head, method, path, query, key, signed, now, body_hash, has_body)
    n, started = 0, time.perf_counter()
    while True:
        for _ in range(200):
            verify(head, method, path, query, key, signed, now, body_hash, has_body)
        n += 200
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / n * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sign_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per shape and form (default 2)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from fastpath import load
    forms = {"interpreted": (load("sdksign", False), load("http1", False)),
             "compiled": (load("sdksign", True), load("http1", True))}
    rows = []
    for name, (raw, body_hash) in _requests().items():
        times = {f: [] for f in forms}
        for rep in range(args.reps):
            for form in (forms if rep % 2 == 0 else dict(reversed(list(forms.items())))):
                sdksign, http1 = forms[form]
                times[form].append(measure(sdksign, http1, raw, body_hash, args.seconds))
        best = {f: min(v) for f, v in times.items()}
        rows.append((name, best["interpreted"], best["compiled"],
                     best["interpreted"] / best["compiled"]))
    lines = ["## The SDK-HMAC-SHA256 check: compiled vs interpreted", "",
             f"Command: `{command_line()}`", "", *harness.machine_info(), "",
             f"Requests signed with huaweicloudsdkcore, parsed once; each form verifies them in a "
             f"loop for {args.seconds:.0f} s, {args.reps} interleaved reps (best of each).", "",
             "| request | interpreted us/check | compiled us/check | ratio | target | verdict |",
             "|---|---:|---:|---:|---:|---|"]
    for name, interp, comp, ratio in rows:
        lines.append(f"| {name} | {interp:.2f} | {comp:.2f} | {ratio:.1f}x | >= {TARGET:.0f}x | "
                     f"{'PASS' if ratio >= TARGET else 'FAIL'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("sdksign", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
