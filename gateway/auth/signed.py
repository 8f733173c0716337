"""Requests signed with ``SDK-HMAC-SHA256`` (an app's key and secret, or an IAM user's AK/SK):
the check both APP and IAM authentication make, on fastpath.sdksign.

A request without a body is checked at once.  For one with a body the date is checked at once
(a stale request is refused before its body is read) and the body is held (hashed as it
arrives, kept once, bounded by the body limit) until the signature over it is checked: no
request with a wrong signature ever reaches a backend, not even in part.
"""
from __future__ import annotations

import time

from fastpath import sdksign
from fastpath.sdksign import SignatureError

from gateway.pipeline import HeldBody


class SignatureCheck:
    """How one kind of caller is checked: ``by_key`` maps a key (bytes) to its credentials
    (with ``.key``, the prepared secret); ``fail(text, reason)`` makes the 401 of this kind;
    ``accept(ex, credentials)`` is called once the key is known, before the signature is
    checked (authorization, client ACL: it may raise), and ``done(ex, credentials)`` once the
    signature passed (sets the caller)."""

    __slots__ = ("by_key", "fail", "accept", "done", "count", "unknown")

    def __init__(self, by_key, fail, accept, done, count, unknown):
        self.by_key = by_key
        self.fail = fail
        self.accept = accept
        self.done = done
        self.count = count          # count(ex, error): a refusal after the stage returned
        self.unknown = unknown      # the message of an unknown key

    def __call__(self, ex, value):
        try:
            signed = sdksign.parse_authorization(value)
        except SignatureError as exc:
            raise self._failed(exc) from None
        credentials = self.by_key.get(signed[0])
        if credentials is None:
            raise self.fail(self.unknown, "unknown_credential")
        self.accept(ex, credentials)
        head = ex.head
        raw = ex.raw_target
        q = raw.find(b"?")
        path, query = (raw, b"") if q < 0 else (raw[:q], raw[q + 1:])
        method = ex.method.encode()
        now = time.time()
        if ex.chunked or ex.content_length > 0:
            try:
                sdksign.check_date(head.get(b"x-sdk-date") or b"", now)
            except SignatureError as exc:
                raise self._failed(exc) from None

            def finish(ex, body_hex):
                try:
                    sdksign.verify(head, method, path, query, credentials.key, signed, now,
                                   body_hex, True)
                except SignatureError as exc:
                    error = self._failed(exc)
                    self.count(ex, error)
                    raise error from None
                self.done(ex, credentials)

            return HeldBody(finish)
        try:
            sdksign.verify(head, method, path, query, credentials.key, signed, now, None, False)
        except SignatureError as exc:
            raise self._failed(exc) from None
        self.done(ex, credentials)
        return None

    def _failed(self, exc: SignatureError):
        """The 401 of a refused signature, classed for the metrics."""
        text = exc.reason
        reason = ("date" if "15 minutes" in text else "signature" if "does not match" in text
                  else "malformed")
        return self.fail(text, reason)
