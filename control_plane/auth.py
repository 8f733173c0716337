"""Bearer tokens of the control plane.

A token is 256 random bits (``secrets.token_urlsafe(32)``); the store keeps only its SHA-256
(:func:`token_hash`).  A request's token is found by the hash of what it presents (an index
lookup on the SHA-256): the token itself is never compared with anything, so the time an answer
takes says at most something about the hash of the guess, nothing about a valid token.  The
stored hash of the row found is then compared with the computed one in constant time
(:func:`hmac.compare_digest`, :func:`_same_hash`): a store whose lookup were looser than byte
equality (a case-insensitive collation, padding rules) lets nothing through either.

Roles: ``read-only`` (every read), ``read-write`` (every read and change, and the tokens
themselves), ``gateway`` (only the distribution endpoint gateways follow).

The first read-write token: ``--admin-token`` / ``TOLLGATE_ADMIN_TOKEN`` when given (stored as
the token named ``admin``, replacing an ``admin`` token of another value), else one generated at
the first start -- when the store has no token at all -- and printed once.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from control_plane.store import Conflict, Store, Token

__all__ = ["ROLES", "READ_ONLY", "READ_WRITE", "GATEWAY", "ADMIN", "token_hash", "new_token",
           "ensure_admin_token", "AuthError", "authenticate", "may"]

READ_ONLY, READ_WRITE, GATEWAY = "read-only", "read-write", "gateway"
ROLES = (READ_ONLY, READ_WRITE, GATEWAY)
#: the name of the first read-write token
ADMIN = "admin"


def token_hash(token: str) -> str:
    """What the store keeps of a token: SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _same_hash(found: Token | None, computed: str) -> bool:
    """Whether the token ``found`` (by a lookup of ``computed``) has exactly that hash
    (constant time)."""
    return found is not None and hmac.compare_digest(found.hash.encode(), computed.encode())


def new_token() -> str:
    """A new random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


async def ensure_admin_token(store: Store, configured: str | None) -> str | None:
    """Make sure a read-write token exists.  ``configured`` (the operator's): stored as ``admin``
    unless it is already there.  Else, when the store has no token, a new one is generated,
    stored and returned (the caller prints it once); otherwise None."""
    if configured:
        wanted = token_hash(configured)
        found = await store.token_by_hash(wanted)
        if not _same_hash(found, wanted):
            found = None
        if found is not None and found.name == ADMIN:
            return None
        try:
            async with store.transaction() as tx:
                if found is not None:       # the value is another token's: not an admin token
                    raise ValueError("the admin token given is the value of another token "
                                     f"({found.name!r}): choose another")
                if any(t.name == ADMIN for t in await tx.tokens()):
                    await tx.delete_token(ADMIN, who="system")
                await tx.add_token(ADMIN, READ_WRITE, wanted, who="system")
        except Conflict:
            # another control plane on the same store, started with the same token, stored it
            # first: fine; anything else is a real conflict
            found = await store.token_by_hash(wanted)
            if found is None or found.name != ADMIN:
                raise
        return None
    if await store.tokens():
        return None
    token = new_token()
    try:
        await store.add_token(ADMIN, READ_WRITE, token_hash(token), who="system")
    except Conflict:            # another control plane on the same store made one first
        return None
    return token


@dataclass(frozen=True)
class AuthError(Exception):
    """401 (no token, or not a valid one) or 403 (a valid token whose role may not do this)."""
    status: int
    code: str
    message: str


def _presented(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate(store: Store, authorization: str | None) -> Token:
    """The token of an ``Authorization`` header value; :class:`AuthError` 401 otherwise."""
    presented = _presented(authorization)
    if presented is None:
        raise AuthError(401, "TG.0401", "this call needs 'Authorization: Bearer <token>'")
    presented_hash = token_hash(presented)
    found = await store.token_by_hash(presented_hash)
    if not _same_hash(found, presented_hash):
        raise AuthError(401, "TG.0401", "the token is not valid")
    return found


def may(role: str, write: bool) -> bool:
    """Whether ``role`` may make an admin call (a change when ``write``)."""
    if role == READ_WRITE:
        return True
    if role == READ_ONLY:
        return not write
    return False
