"""IAM authentication: a JWT in ``X-Auth-Token`` (gateway.auth.tokens), or a request signed
with an IAM user's AK/SK (``SDK-HMAC-SHA256``, the check apps pass too).  The token's subject
and account, or the signing user and its account, become the caller.  Failures: 401
``APIC.0301`` saying which check failed, never echoing the token.
"""
from __future__ import annotations

from fastpath import sdksign

from gateway.errors import IamAuthFailed
from gateway.pipeline import Wait

from .caller import Caller, RepeatedField, single_value
from .signed import SignatureCheck

#: the longest token read (a header this long is refused before any decoding)
MAX_TOKEN_BYTES = 16 * 1024


class IamUserCredentials:
    __slots__ = ("name", "account", "key")

    def __init__(self, user):
        self.name = user.name
        self.account = user.account
        self.key = sdksign.prepare_secret(user.secret_key.encode())    # (the SK is not kept)


class IamIndex:
    """The document's IAM users by access key, and its token verifier (or None)."""

    def __init__(self, iam, verifier):
        self.by_key = {u.access_key.encode(): IamUserCredentials(u) for u in iam.users}
        self.verifier = verifier


def _iam_failed(text: str, reason: str) -> IamAuthFailed:
    return IamAuthFailed(f"Incorrect IAM authentication information: {text}", reason=reason)


def _signed_by(ex, user: IamUserCredentials):
    ex.caller = Caller("iam", user=user.name, account=user.account)


def _accept_any(ex, user):
    pass


class IamAuth:
    """The IAM-auth stage of one API in one environment."""

    def __init__(self, index: IamIndex, api_name: str, metrics=None, fetch_timeout_s=3.0):
        self.verifier = index.verifier
        if self.verifier is not None:
            # (imported once here, not per request: pyjwt is loaded only when tokens are used)
            from .tokens import TokenRejected
            self.rejected = TokenRejected
        self.api_name = api_name
        self.metrics = metrics
        self.fetch_timeout_s = fetch_timeout_s
        self.signature = SignatureCheck(index.by_key, _iam_failed, _accept_any, _signed_by,
                                        self._count, "unknown access key")

    def _count(self, ex, error):
        if self.metrics is not None:
            self.metrics.count_auth_failure(self.api_name, ex.env, "iam", error.reason)

    def __call__(self, ex):
        try:
            return self._check(ex)
        except IamAuthFailed as error:
            self._count(ex, error)
            raise

    def _check(self, ex):
        head = ex.head
        try:
            token = single_value(head, b"x-auth-token")
            value = single_value(head, b"authorization") if token is None else None
        except RepeatedField as exc:
            raise _iam_failed(f"{exc} is repeated", "malformed") from None
        if token is not None:
            if self.verifier is None:
                raise _iam_failed("tokens are not accepted (no token validation configured)",
                                  "malformed")
            return self._token(ex, token.strip(b" \t"))
        if value is not None:
            return self.signature.check(ex, value)
        raise _iam_failed("no X-Auth-Token or Authorization", "missing")

    def _token(self, ex, token: bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise _iam_failed("token too long", "malformed")
        try:
            identity = self.verifier.verify(token)
        except self.rejected as exc:
            raise _iam_failed(exc.message, exc.reason) from None
        if identity is not None:
            ex.caller = Caller("iam", user=identity.user, account=identity.account)
            return None
        # the signing key is not known yet: fetch the JWK set (shared by every request that
        # needs it, at a bounded rate), then check again
        failed = _iam_failed("signing keys unavailable", "unknown_key")
        return Wait(self._after_fetch(ex, token), self.fetch_timeout_s + 1.0, failed)

    async def _after_fetch(self, ex, token):
        try:
            await self.verifier.refresh()
            identity = self.verifier.verify(token)
            if identity is None:
                raise self.rejected("unknown_key", "unknown signing key")
        except self.rejected as exc:
            error = _iam_failed(exc.message, exc.reason)
            self._count(ex, error)
            raise error from None
        ex.caller = Caller("iam", user=identity.user, account=identity.account)
