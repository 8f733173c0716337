"""APP authentication: requests signed with an app's key and secret (``SDK-HMAC-SHA256``).

An :class:`AppAuth` is compiled once per (API, environment) by the snapshot: the apps by key
(each secret's HMAC keyed once) and the names of the apps authorized in that environment.  As a
stage it reads the ``Authorization`` field, finds the app, checks its authorization and the
date, then checks the signature (fastpath.sdksign) -- at once for a request without a body;
for one with a body, once the body has arrived: the body is held (hashed as it streams, kept
once, bounded by the body limit) and released to the backend only after the check passed, so
no request with a wrong signature ever reaches a backend, not even in part.
"""
from __future__ import annotations

import hashlib
import hmac
import time

from fastpath import sdksign
from fastpath.sdksign import SignatureError

from gateway.errors import AppAuthFailed, AppNotAuthorized


class AppCredentials:
    """One app as the stage needs it."""

    __slots__ = ("name", "key", "secret_digest")

    def __init__(self, name: str, secret: str):
        self.name = name
        self.key = sdksign.prepare_secret(secret.encode())     # (the secret is not kept)
        self.secret_digest = _digest(secret.encode())         # for X-HW-AppKey


def _digest(value: bytes) -> bytes:
    # secrets and codes are looked up and compared by their digests: a dict lookup or a
    # comparison of digests tells nothing of how much of a guess was right
    return hashlib.sha256(value).digest()


class AppIndex:
    """The document's apps by key (those with a key and a secret) and by AppCode digest."""

    def __init__(self, apps):
        self.by_key = {app.key.encode(): AppCredentials(app.name, app.secret)
                       for app in apps if app.key and app.secret}
        self.by_code = {_digest(code.encode()): app.name for app in apps
                        for code in app.app_codes}


def app_index(apps) -> AppIndex:
    return AppIndex(apps)


class HeldBody:
    """A request body held until its signature is checked: hashed as it arrives."""

    __slots__ = ("chunks", "hasher", "finish")

    def __init__(self, finish):
        self.chunks = []
        self.hasher = hashlib.sha256()
        self.finish = finish        # finish(ex, body hex digest): raises a GatewayError or not

    def add(self, chunk: bytes):
        self.chunks.append(chunk)
        self.hasher.update(chunk)


class AppAuth:
    """The APP-auth stage of one API in one environment."""

    def __init__(self, apps: AppIndex, allowed: frozenset, api_name: str,
                 app_code: bool = False, key_headers: bool = False, metrics=None):
        self.apps = apps
        self.allowed = allowed
        self.api_name = api_name
        self.metrics = metrics              # the worker's (None when only validating)
        self.app_code = app_code            # X-Apig-AppCode accepted
        self.key_headers = key_headers      # X-HW-ID / X-HW-AppKey accepted

    def _authorized(self, ex, name: str):
        if name not in self.allowed:
            raise AppNotAuthorized("The app is not authorized to call this API",
                                   f"app {name} not authorized for {self.api_name}@{ex.env}")

    def __call__(self, ex):
        try:
            self._check(ex)
        except (AppAuthFailed, AppNotAuthorized) as error:
            self._count(ex, error)
            raise

    def _count(self, ex, error):
        if self.metrics is not None:
            reason = error.reason if isinstance(error, AppAuthFailed) else "not_authorized"
            self.metrics.count_auth_failure(self.api_name, ex.env, "app", reason)

    def _check(self, ex):
        head = ex.head
        value = head.get(b"authorization")
        if value is None:
            code = head.get(b"x-apig-appcode") if self.app_code else None
            if code is not None:
                name = self.apps.by_code.get(_digest(code.strip(b" \t")))
                if name is None:
                    raise AppAuthFailed("Incorrect app authentication information: "
                                        "unknown AppCode", reason="unknown_credential")
                self._authorized(ex, name)
                ex.caller = name
                return
            key = head.get(b"x-hw-id") if self.key_headers else None
            if key is not None:
                app = self.apps.by_key.get(key.strip(b" \t"))
                secret = head.get(b"x-hw-appkey") or b""
                # (compared even for an unknown key, against a digest that matches nothing)
                expected = app.secret_digest if app is not None else b"\0" * 32
                if not hmac.compare_digest(_digest(secret.strip(b" \t")), expected) or app is None:
                    raise AppAuthFailed("Incorrect app authentication information: "
                                        "wrong app key or secret", reason="unknown_credential")
                self._authorized(ex, app.name)
                ex.caller = app.name
                return
            raise AppAuthFailed("Incorrect app authentication information: no Authorization",
                                "no Authorization field", reason="missing")
        try:
            signed = sdksign.parse_authorization(value)
        except SignatureError as exc:
            raise _failed(exc) from None
        app = self.apps.by_key.get(signed[0])
        if app is None:
            raise AppAuthFailed("Incorrect app authentication information: unknown app key",
                                reason="unknown_credential")
        self._authorized(ex, app.name)
        raw = ex.raw_target
        q = raw.find(b"?")
        path, query = (raw, b"") if q < 0 else (raw[:q], raw[q + 1:])
        method = ex.method.encode()
        now = time.time()

        def finish(ex, body_hex):
            try:
                sdksign.verify(head, method, path, query, app.key, signed, now, body_hex, True)
            except SignatureError as exc:
                error = _failed(exc)
                self._count(ex, error)
                raise error from None
            ex.caller = app.name

        if ex.chunked or ex.content_length > 0:
            # the date is checked now: a stale request is refused before its body is read
            try:
                sdksign.check_date(head.get(b"x-sdk-date") or b"", now)
            except SignatureError as exc:
                raise _failed(exc) from None
            ex.held = HeldBody(finish)
            return
        try:
            sdksign.verify(head, method, path, query, app.key, signed, now, None, False)
        except SignatureError as exc:
            raise _failed(exc) from None
        ex.caller = app.name


def _failed(exc: SignatureError) -> AppAuthFailed:
    """The 401 of a refused signature, classed for the metrics."""
    text = exc.reason
    reason = ("date" if "15 minutes" in text else "signature" if "does not match" in text
              else "malformed")
    return AppAuthFailed(f"Incorrect app authentication information: {text}", reason=reason)
