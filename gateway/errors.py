"""The errors the gateway answers with itself, in the ROMA APIC format.

Every error is a :class:`GatewayError` carrying the ROMA code, the HTTP status and a public
message that tells the client enough to fix the call; ``detail`` is for the log only (it may hold
what the client must not see).  They are turned into responses in one place:
:func:`error_response`.
"""
from __future__ import annotations

import msgspec

_json = msgspec.json.Encoder()


class GatewayError(Exception):
    """An error the gateway answers itself.  Subclasses fix code and status."""

    code = "APIC.0601"
    status = 500
    #: close the client connection after answering (the request framing cannot be trusted)
    close = False

    #: the class of a refusal, for the metrics (authentication failures)
    reason = ""

    #: more complete ``Name: value\r\n`` header lines for the answer (``Retry-After``...)
    lines = b""

    #: its cause is logged once per incident elsewhere (Redis away): not once per request
    cause_logged = False

    def __init__(self, message: str, detail: str | None = None, *, status: int | None = None,
                 reason: str | None = None, lines: bytes | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail if detail is not None else message
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason
        if lines is not None:
            self.lines = lines


class BadRequest(GatewayError):
    """Malformed request: APIC.0201, 400; also the size limits with their own statuses."""

    code = "APIC.0201"
    status = 400


class FramingError(BadRequest):
    """The request's framing is ambiguous or broken: answer 400 and close the connection."""

    close = True


class TooLarge(BadRequest):
    """A size limit: body 413, URI 414, headers 494 (status given by the raiser)."""

    close = True


class AuthFailed(GatewayError):
    """A credential was missing, malformed or wrong; ``reason`` classes the failure for the
    metrics (missing, malformed, unknown_credential, date, signature, expired, denied...)."""

    status = 401
    reason = "signature"


class AppAuthFailed(AuthFailed):
    """APP authentication failed (no, malformed or wrong credentials)."""

    code = "APIC.0303"


class IamAuthFailed(AuthFailed):
    """IAM authentication failed: a bad, expired or unverifiable token, a wrong AK/SK signature."""

    code = "APIC.0301"


class AuthorizerDenied(AuthFailed):
    """A custom authorizer said no (or the identities it needs are missing or invalid)."""

    code = "APIC.0305"


class AuthorizerFailed(GatewayError):
    """A custom authorizer could not decide: it failed, timed out or answered garbage."""

    code = "APIC.0601"
    status = 500
    reason = "failed"


class IpDenied(GatewayError):
    """The client address is not allowed (an app's client ACL, an IP ACL)."""

    code = "APIC.0402"
    status = 403


class AccountDenied(GatewayError):
    """The caller's IAM account is not allowed by the account ACL bound to the API."""

    code = "APIC.0302"
    status = 403


class Throttled(GatewayError):
    """A throttle's limit was reached (``Retry-After`` says when to try again)."""

    code = "APIC.0308"
    status = 429


class QuotaExhausted(GatewayError):
    """The calling app's quota is used up for the period."""

    code = "APIC.0501"
    status = 405


class LimitsUnavailable(GatewayError):
    """Throttles are counted through Redis, Redis is away and ``fail_mode`` is ``closed``."""

    code = "APIC.0601"
    status = 503
    cause_logged = True     # (the outage is logged once, when it starts)


class AppNotAuthorized(GatewayError):
    """The app is not authorized for the API in the environment called."""

    code = "APIC.0304"
    status = 403


class NotFound(GatewayError):
    code = "APIC.0101"
    status = 404


class BackendUnavailable(GatewayError):
    code = "APIC.0202"
    status = 502


class BackendTimeout(GatewayError):
    code = "APIC.0203"
    status = 504


class InternalError(GatewayError):
    code = "APIC.0601"
    status = 500


REASONS = {
    100: "Continue", 101: "Switching Protocols", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 422: "Unprocessable Entity", 425: "Too Early",
    426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 494: "Request Header Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


def reason(status: int) -> str:
    return REASONS.get(status, "Unknown")


def error_body(error: GatewayError, request_id: str) -> bytes:
    """The JSON body of an error answer: ``{"error_code", "error_msg", "request_id"}``."""
    return _json.encode({"error_code": error.code, "error_msg": error.message, "request_id": request_id})
