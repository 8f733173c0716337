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
    signature passed (sets the caller).  Attribute types: gateway/auth/signed.pxd."""

    def __init__(self, by_key, fail, accept, done, count, unknown):
        self.by_key = by_key
        self.fail = fail
        self.accept = accept
        self.done = done
        self.count = count          # count(ex, error): a refusal after the stage returned
        self.unknown = unknown      # the message of an unknown key

    def check(self, ex, value):
        """Check the request signed by ``value`` (its Authorization field); returns None
        (checked), or a HeldBody when the signature covers a body still to come."""
        try:
            signed = sdksign.parse_authorization(value)
        except SignatureError as exc:
            raise self.failed(exc) from None
        credentials = self.by_key.get(signed[0])
        if credentials is None:
            raise self.fail(self.unknown, "unknown_credential")
        self.accept(ex, credentials)
        raw = ex.raw_target
        q = raw.find(b"?")
        path, query = (raw, b"") if q < 0 else (raw[:q], raw[q + 1:])
        now = time.time()
        if ex.chunked or ex.content_length > 0:
            try:
                sdksign.check_date(ex.head.get(b"x-sdk-date") or b"", now)
            except SignatureError as exc:
                raise self.failed(exc) from None
            pending = PendingSignature()
            pending.check = self
            pending.credentials = credentials
            pending.signed = signed
            pending.path = path
            pending.query = query
            pending.now = now
            return HeldBody(pending)
        try:
            sdksign.verify(ex.head, ex.method.encode(), path, query, credentials.key, signed, now,
                           None, False)
        except SignatureError as exc:
            raise self.failed(exc) from None
        self.done(ex, credentials)
        return None

    def failed(self, exc):
        """The 401 of a refused signature, classed for the metrics."""
        text = exc.reason
        reason = ("date" if "15 minutes" in text else "signature" if "does not match" in text
                  else "malformed")
        return self.fail(text, reason)


class PendingSignature:
    """The check of a signed request whose body is held: called with the body's digest once it
    has arrived (``HeldBody.finish``)."""

    def __call__(self, ex, body_hex):
        check = self.check
        try:
            sdksign.verify(ex.head, ex.method.encode(), self.path, self.query,
                           self.credentials.key, self.signed, self.now, body_hex, True)
        except SignatureError as exc:
            error = check.failed(exc)
            check.count(ex, error)
            raise error from None
        check.done(ex, self.credentials)
        return None
