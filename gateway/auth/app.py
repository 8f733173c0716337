"""APP authentication: requests signed with an app's key and secret (``SDK-HMAC-SHA256``).

An :class:`AppAuth` is compiled once per (API, environment) by the snapshot: the apps by key
(each secret's HMAC keyed once) and the names of the apps authorized in that environment.  As a
stage it reads the ``Authorization`` field, finds the app, checks its authorization and its
client ACL, then the signature (gateway.auth.signed); or, when the API allows them, an AppCode
or the app's key and secret in headers.
"""
from __future__ import annotations

import hashlib
import hmac

from fastpath import sdksign

from gateway.errors import AppAuthFailed, AppNotAuthorized, IpDenied
from gateway.policy.iprules import IpRule

from .caller import Caller, RepeatedField, single_value
from .signed import SignatureCheck


class AppCredentials:
    """One app as the stage needs it."""

    def __init__(self, name: str, key: str, secret: str | None, acl):
        self.name = name
        self.public_key = key                   # (the app's public identifier)
        # (the secret itself is not kept: its keyed HMAC and its digest)
        self.key = sdksign.prepare_secret(secret.encode()) if secret else None
        self.secret_digest = _digest(secret.encode()) if secret else None   # for X-HW-AppKey
        self.acl = IpRule(acl.action, acl.values) if acl is not None else None


def _digest(value: bytes) -> bytes:
    # secrets and codes are looked up and compared by their digests: a dict lookup or a
    # comparison of digests tells nothing of how much of a guess was right
    return hashlib.sha256(value).digest()


class AppIndex:
    """The document's apps by key (those with a key and a secret) and by AppCode digest."""

    def __init__(self, apps):
        every = [AppCredentials(app.name, app.key or "", app.secret, app.acl) for app in apps]
        self.by_key = {c.public_key.encode(): c for c in every if c.public_key and c.key}
        self.by_code = {_digest(code.encode()): c for app, c in zip(apps, every)
                        for code in app.app_codes}


def app_index(apps) -> AppIndex:
    return AppIndex(apps)


def _app_failed(text: str, reason: str) -> AppAuthFailed:
    return AppAuthFailed(f"Incorrect app authentication information: {text}", reason=reason)


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
        self.signature = SignatureCheck(apps.by_key, _app_failed, self._accept, _identified,
                                        self._count, "unknown app key")

    def _accept(self, ex, app: AppCredentials):
        """The app is known: is it authorized here, and may it call from this address?"""
        if app.name not in self.allowed:
            raise AppNotAuthorized("The app is not authorized to call this API",
                                   f"app {app.name} not authorized for {self.api_name}@{ex.env}")
        if app.acl is not None and not app.acl.allows(ex.client_ip):
            raise IpDenied("The client address is not allowed for this app",
                           f"app {app.name}: {ex.client_ip} refused by its client ACL")

    def __call__(self, ex):
        try:
            return self._check(ex)
        except (AppAuthFailed, AppNotAuthorized, IpDenied) as error:
            self._count(ex, error)
            raise

    def _count(self, ex, error):
        if self.metrics is not None:
            reason = (error.reason if isinstance(error, AppAuthFailed) else
                      "ip_denied" if isinstance(error, IpDenied) else "not_authorized")
            self.metrics.count_auth_failure(self.api_name, ex.env, "app", reason)

    def _check(self, ex):
        head = ex.head
        try:
            value = single_value(head, b"authorization")
            if value is not None:
                return self.signature.check(ex, value)
            code = single_value(head, b"x-apig-appcode") if self.app_code else None
            key = single_value(head, b"x-hw-id") if self.key_headers else None
            secret = single_value(head, b"x-hw-appkey") if key is not None else None
        except RepeatedField as exc:
            raise _app_failed(f"{exc} is repeated", "malformed") from None
        if code is not None:
            app = self.apps.by_code.get(_digest(code.strip(b" \t")))
            if app is None:
                raise _app_failed("unknown AppCode", "unknown_credential")
            self._accept(ex, app)
            _identified(ex, app)
            return None
        if key is not None:
            app = self.apps.by_key.get(key.strip(b" \t"))
            secret = secret or b""
            # (compared even for an unknown key, against a digest that matches nothing)
            expected = app.secret_digest if app is not None else b"\0" * 32
            if not hmac.compare_digest(_digest(secret.strip(b" \t")), expected) or app is None:
                raise _app_failed("wrong app key or secret", "unknown_credential")
            self._accept(ex, app)
            _identified(ex, app)
            return None
        raise AppAuthFailed("Incorrect app authentication information: no Authorization",
                            "no Authorization field", reason="missing")


def _identified(ex, app: AppCredentials):
    ex.caller = Caller("app", app.name, app.public_key)
